//! The `degre` binary.
#![forbid(unsafe_code)]

use clap::Parser;
use degre::cli::{self, Cli};
use degre::config::ConfigError;

/// sysexits' EX_USAGE: the configuration is wrong, retrying will not help.
const EXIT_CONFIG: i32 = 64;

fn main() {
    let cli = Cli::parse();
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
