use clap::Parser;

fn main() {
    let cli = kiln::cli::Cli::parse();
    if let Err(e) = kiln::cli::run(cli) {
        e.report();
        std::process::exit(e.exit_code());
    }
}
