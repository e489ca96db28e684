use clap::Parser as _;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    quiet_broken_pipe();
    let cli = cemesh_broker::cli::Cli::parse();
    match cemesh_broker::main_with(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cemesh: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `cemesh get ... | head` closes stdout early; like other Unix tools, stop quietly
/// instead of panicking in `println!`. (SIGPIPE itself stays ignored: the servers
/// must never die of a closed socket.)
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141); // 128 + SIGPIPE, as a shell reports it
        }
        default(info);
    }));
}
