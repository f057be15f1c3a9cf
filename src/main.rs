// kiln allocates many small strings and maps while lowering large matrices.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    kiln::process::supervise::run_if_asked();
    std::process::exit(kiln::output::finish(kiln::cli::main(std::env::args_os())));
}
