//! Running a mount in a daemon: the fork, the pipe over which the daemon
//! tells the waiting parent that the mount is live (or why not), and the
//! daemon's detaching from the terminal and logging to the store directory.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;

use super::mount::{Plan, serve};
use crate::env_filter;

/// Runs the mount in a daemon and waits until it is live (exit 0) or has
/// failed (its error is printed; exit 2).
///
/// The store is opened in the daemon, after the fork, so its lock belongs
/// to the daemon. The daemon reports over a pipe: `ok`, or `error: ...`.
pub fn daemonize(plan: &Plan) -> ExitCode {
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("zippyfs: cannot make a pipe: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: no thread has been started yet (logging is not set up and
    // nothing before this point spawns one), so the child is a complete
    // copy of a single-threaded process and may do anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("zippyfs: cannot fork: {}", std::io::Error::last_os_error());
        return ExitCode::from(2);
    }
    if pid == 0 {
        drop(reader);
        daemon(plan, writer);
    }
    drop(writer);
    let mut msg = String::new();
    let _ = reader.read_to_string(&mut msg);
    if msg.trim_end() == "ok" {
        return ExitCode::SUCCESS;
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match msg.trim_end().strip_prefix("error: ") {
        Some(e) => eprintln!("zippyfs: {e}"),
        None => eprintln!(
            "zippyfs: the daemon exited before the mount was live (see {})",
            plan.store.join(LOG_FILE).display()
        ),
    }
    ExitCode::from(2)
}

const LOG_FILE: &str = "zippyfs.log";

/// The daemon: never returns.
fn daemon(plan: &Plan, writer: std::io::PipeWriter) -> ! {
    let mut writer = Some(writer);
    let mut tell = |msg: &str| {
        if let Some(mut w) = writer.take() {
            let _ = w.write_all(msg.as_bytes());
        }
    };
    let code = match detach(plan) {
        Err(e) => {
            tell(&format!("error: {e:#}"));
            2
        }
        Ok(()) => {
            let r = serve(plan, &mut || tell("ok"));
            match r {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    tell(&format!("error: {e:#}"));
                    2
                }
            }
        }
    };
    std::process::exit(code)
}

/// A new session without a terminal, standard streams on /dev/null, logs
/// to the store directory's log file, working directory `/`.
fn detach(plan: &Plan) -> anyhow::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions; we are not a
    // process group leader (the parent is), so it succeeds.
    unsafe { libc::setsid() };
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, from a descriptor we own.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
            return Err(std::io::Error::last_os_error()).context("redirect standard streams");
        }
    }
    drop(null);
    std::env::set_current_dir("/").context("chdir /")?;
    std::fs::create_dir_all(&plan.store)
        .with_context(|| format!("create store directory {}", plan.store.display()))?;
    let path = plan.store.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open log file {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .init();
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    tracing::info!(pid = std::process::id(), mountpoint = %plan.mountpoint.display(), "zippyfs daemon starting");
    Ok(())
}
