use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = cemesh_broker::cli::Cli::parse();
    match cemesh_broker::main_with(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cemesh: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
