//! The `kubeshard` command line. This file holds only argument parsing and wiring; every
//! subcommand's work lives in a library crate.

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A Kubernetes-compatible cluster system built for very large clusters.
#[derive(Debug, Parser)]
#[command(name = "kubeshard", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version of this binary and the Kubernetes version it serves.
    Version,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("kubeshard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}
