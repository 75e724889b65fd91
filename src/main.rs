//! The `zippyfs` command line: parsing and wiring only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zippyfs::store::{Store, StoreOptions};

#[derive(Parser)]
#[command(
    name = "zippyfs",
    version,
    about = "A versioned FUSE filesystem that syncs through a server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every reachable page of every kept version, and the space accounting.
    Fsck {
        /// The store directory.
        store: PathBuf,
    },
    /// Show a store's versions and how its space is used.
    Info {
        /// The store directory.
        store: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zippyfs: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn open(dir: &Path) -> anyhow::Result<Store> {
    if !dir.join(zippyfs::store::STORE_FILE).is_file() {
        anyhow::bail!("{} holds no zippyfs store", dir.display());
    }
    Store::open(dir, StoreOptions::default())
        .with_context(|| format!("cannot open store {}", dir.display()))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Fsck { store } => {
            let s = open(&store)?;
            let report = s.fsck()?;
            print!("{report}");
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Info { store } => {
            let s = open(&store)?;
            let st = s.stats();
            println!(
                "file {} bytes, {} pages below the high-water mark, {} free, {} kept for old versions",
                st.file_bytes, st.hwm_pages, st.free_pages, st.retained_pages
            );
            println!("{} versions:", st.versions);
            for v in s.versions() {
                println!(
                    "  {:>8}  {}  {:>8} changes  {:>12} bytes  {}",
                    v.id, v.time, v.changes, v.bytes, v.cause
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
