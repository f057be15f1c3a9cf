use clap::Parser;

// kiln allocates many small strings and maps while lowering large matrices.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    kiln::exec::supervise::run_if_asked();
    let cli = kiln::cli::Cli::parse();
    if let Err(e) = kiln::cli::run(cli) {
        e.report();
        std::process::exit(e.exit_code());
    }
}
