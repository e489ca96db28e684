use clap::Parser as _;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    no_transparent_huge_pages();
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

/// Turns transparent huge pages off for this process, as `MIMALLOC_ALLOW_THP=0`
/// would (unless that variable is set: then mimalloc does what it says). mimalloc
/// asks for huge pages on its arenas; memory it returned while the broker idled is
/// then faulted back 2 MiB at a time, each zeroed in the thread that touched it: the
/// first ~300 ms of load after a quiet second spent two thirds of the broker's CPU
/// in `clear_page_erms`, and the end-to-end p99 of that second went from ~3 ms to
/// 90-140 ms (`bench/README.md`, "Huge pages after a quiet spell").
fn no_transparent_huge_pages() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Best effort: a kernel without the prctl keeps its default.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
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
