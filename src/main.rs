//! The `degre` binary.
#![forbid(unsafe_code)]

use clap::error::{ContextKind, ErrorKind};
use clap::Parser;
use degre::cli::{self, Cli};
use degre::config::ConfigError;

/// mimalloc rather than the system allocator: the request path allocates many small,
/// short-lived blocks (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits' EX_USAGE: the configuration is wrong, retrying will not help.
const EXIT_CONFIG: i32 = 64;

/// 128 + SIGPIPE: how a Unix tool ends when what reads its output has gone.
const EXIT_BROKEN_PIPE: i32 = 141;

fn main() {
    quiet_on_broken_pipe();
    let cli = Cli::try_parse().unwrap_or_else(|e| usage_error(e));
    #[cfg(feature = "offline")]
    if cli.command.is_offline() {
        degre::offline::single_threaded_kernels();
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(cli::run(cli.command)));
    if let Err(e) = result {
        eprintln!("degre: {e:#}");
        let code = if e.is::<ConfigError>() {
            EXIT_CONFIG
        } else if let Some(failed) = e.downcast_ref::<cli::rerank::RerankFailed>() {
            failed.exit_code()
        } else {
            1
        };
        std::process::exit(code);
    }
}

/// `degre check-logs … | head`: `println!` panics once `head` has gone (Rust ignores
/// SIGPIPE). End quietly with the shell's code for it instead of printing a panic; every
/// other panic is reported as before.
fn quiet_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = (info.payload().downcast_ref::<String>().map(String::as_str))
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
        report(info);
    }));
}

/// `--help` and `--version` print and exit 0; any other error in the command line or a
/// `DEGRE_*` variable exits 64 and names the variable when the bad value came from it.
fn usage_error(e: clap::Error) -> ! {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let _ = e.print();
    let flag = e.get(ContextKind::InvalidArg).map(|arg| arg.to_string());
    if let Some(flag) = flag.as_deref().and_then(|f| f.split_whitespace().next()) {
        let var = format!(
            "DEGRE_{}",
            flag.trim_start_matches('-')
                .to_uppercase()
                .replace('-', "_")
        );
        if let Ok(value) = std::env::var(&var) {
            eprintln!("note: the value came from the environment: {var}={value:?}");
        }
    }
    std::process::exit(EXIT_CONFIG);
}
