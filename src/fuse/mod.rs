//! The kernel side: the mount's life cycle and the two transports that
//! carry FUSE requests between the kernel and the core ([`Fs`]).
//!
//! - fuser mounts and answers INIT (through [`Negotiate`], which asks for
//!   the capabilities we want, FUSE_OVER_IO_URING among them), and nothing
//!   else: we never run fuser's session loop.
//! - [`wire`] decodes requests and encodes replies; [`ops`] is the one
//!   table from opcode to handler, shared by both transports.
//! - [`classic`] reads `/dev/fuse` with one thread per CPU; [`ring`] serves
//!   per-CPU io_uring queues (Linux 6.14+), one pinned thread and one ring
//!   per core, and `/dev/fuse` beside them.
//!
//! Why decode the wire ourselves: fuser's request parsing and replies are
//! private to its session loop, so a ring transport on top of fuser would
//! need a second decoder and a second set of handlers. One decoder (about
//! as long as the fuser adapter it replaced) serves both transports.
//!
//! ## How a mount ends
//!
//! When the filesystem is unmounted (`umount <dir>`, or SIGINT/SIGTERM via
//! [`signals`]) the kernel tears the connection down (for a plain `fuse`
//! mount it sends no `DESTROY`: it aborts the connection): reads of
//! `/dev/fuse` fail with `ENODEV` and the ring's commands complete with an
//! error. Each transport thread then returns, [`mount`] commits what is
//! left ([`Fs::shutdown`]) and returns.
//!
//! ## Caching
//!
//! We are the only writer of the filesystem, so the kernel may cache
//! freely: writeback cache, `FOPEN_KEEP_CACHE` on every open, and
//! attributes and entries valid for [`ops::TTL`].

pub mod classic;
mod counts;
pub mod fsyncs;
#[doc(hidden)]
pub mod fuzzing;
mod notify;
pub mod ops;
pub mod ring;
mod signals;
pub mod wire;

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use fuser::{
    Config, Filesystem, InitFlags, KernelConfig, MountOption, Request, Session, SessionACL,
};
use parking_lot::Mutex;

use crate::fs::Fs;
use ops::Ops;
use signals::Signals;

/// The largest write request we ask the kernel for.
const MAX_WRITE: u32 = 1 << 20;

/// How requests travel between the kernel and us.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// io_uring where the kernel offers it, else `/dev/fuse`.
    #[default]
    Auto,
    /// FUSE over io_uring, or fail.
    Uring,
    /// `read`/`write` on `/dev/fuse`.
    Classic,
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "uring" => Ok(Transport::Uring),
            "classic" => Ok(Transport::Classic),
            _ => Err(format!("{s:?}: the transport is auto, uring or classic")),
        }
    }
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOpts {
    /// Transport threads: with the classic transport, readers of
    /// `/dev/fuse`; with io_uring, the threads the per-CPU queues are
    /// spread over (at most one per queue).
    pub threads: usize,
    pub transport: Transport,
    /// Ring entries per io_uring queue.
    pub queue_depth: u32,
    /// The share (percent) of the system's dirty page cache the kernel may
    /// hold for this mount before throttling writers, with the kernel's
    /// strict per-FUSE-mount limit lifted; `None` leaves the kernel's
    /// defaults (1%, strict).
    pub kernel_dirty_ratio: Option<u32>,
    /// How long the kernel may cache attributes and entries.
    pub ttl: std::time::Duration,
    /// Ask for the kernel's writeback cache: writes land in the page cache
    /// and reach the daemon in large batches, at the price of a SETATTR of
    /// the times after writes and unlinks (see tuning.md).
    pub writeback_cache: bool,
    /// Further mount options (`-o`), passed to the kernel mount.
    pub options: Vec<String>,
}

/// Entries per queue by default: enough for the kernel's default of 12
/// background requests plus foreground ones on a core, at 1 MiB of
/// payload buffer each (see tuning.md).
pub const DEFAULT_QUEUE_DEPTH: u32 = 16;

/// See [`MountOpts::kernel_dirty_ratio`] and tuning.md: lifting the strict
/// 1% limit took 4 KiB random writes from 19k to 89k IOPS here.
pub const DEFAULT_KERNEL_DIRTY_RATIO: u32 = 20;

impl Default for MountOpts {
    fn default() -> Self {
        MountOpts {
            threads: 1,
            transport: Transport::Auto,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            kernel_dirty_ratio: Some(DEFAULT_KERNEL_DIRTY_RATIO),
            ttl: ops::TTL,
            writeback_cache: true,
            options: Vec::new(),
        }
    }
}

/// Why a mount failed; each message includes its cause.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot mount on {}: {error}", .path.display())]
    Mount { path: PathBuf, error: io::Error },
    #[error("cannot set up SIGINT/SIGTERM handling: {0}")]
    Signals(io::Error),
    #[error("--transport uring: {0}")]
    Transport(String),
    #[error("the FUSE session failed: {0}")]
    Session(io::Error),
    /// What was in memory at unmount could not be committed: lost.
    #[error(
        "the final commit failed: {error}{}. NOT SAVED: changes to {inodes} files and \
         directories ({bytes} bytes of data){}; the store holds version {version}",
        .failure.as_ref().map_or(String::new(), |f| format!(" (the filesystem had stopped taking changes: {f})")),
        if .names.is_empty() { String::new() } else { format!(", among them entries named {}", .names) }
    )]
    FinalCommit {
        error: String,
        failure: Option<String>,
        inodes: usize,
        bytes: u64,
        names: String,
        version: u64,
    },
}

/// What INIT settled.
#[derive(Clone, Copy, Debug, Default)]
struct Negotiated {
    writeback: bool,
    uring: bool,
    /// `fuse_setxattr_in` in its 16-byte form, which carries
    /// FUSE_SETXATTR_ACL_KILL_SGID (the handler table expects it).
    setxattr_ext: bool,
    max_write: u32,
    max_readahead: u32,
}

/// fuser's side of the handshake: asks for the capabilities we use.
struct Negotiate {
    want_uring: bool,
    want_writeback: bool,
    result: Arc<Mutex<Option<Negotiated>>>,
}

impl Filesystem for Negotiate {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let mut n = Negotiated::default();
        for (what, flag) in [
            ("writeback cache", InitFlags::FUSE_WRITEBACK_CACHE),
            ("readdirplus", InitFlags::FUSE_DO_READDIRPLUS),
            ("adaptive readdirplus", InitFlags::FUSE_READDIRPLUS_AUTO),
            ("async read", InitFlags::FUSE_ASYNC_READ),
            (
                "parallel directory operations",
                InitFlags::FUSE_PARALLEL_DIROPS,
            ),
            // File handles (`name_to_handle_at`, NFS export) stay valid
            // while their inode lives, across remounts: a handle is the
            // inode number, never reused; the kernel turns it back into an
            // inode with a LOOKUP of `.` (and `..` for a directory's parent).
            ("export support", InitFlags::FUSE_EXPORT_SUPPORT),
            // POSIX ACLs: the kernel enforces them (and caches them); we
            // keep mode and access ACL in step and apply default ACLs to
            // new inodes (`fs/acl.rs`), which needs the umask unapplied.
            ("POSIX ACLs", InitFlags::FUSE_POSIX_ACL),
            ("unmasked modes", InitFlags::FUSE_DONT_MASK),
            // Tells us when setting an ACL must drop set-group-ID (a caller
            // outside the file's group), as a local filesystem does.
            ("extended setxattr", InitFlags::FUSE_SETXATTR_EXT),
            // We drop set-user-ID, set-group-ID and file capabilities on
            // write, truncate and chown ourselves (`Fs::kill_privs`), so the
            // kernel stops asking for `security.capability` before every
            // write (it marks the superblock SB_NOSEC).
            ("killpriv v2", InitFlags::FUSE_HANDLE_KILLPRIV_V2),
        ] {
            if flag == InitFlags::FUSE_WRITEBACK_CACHE && !self.want_writeback {
                continue;
            }
            if config.add_capabilities(flag).is_err() {
                tracing::debug!("the kernel does not offer {what}; carrying on without it");
            } else if flag == InitFlags::FUSE_WRITEBACK_CACHE {
                n.writeback = true;
            } else if flag == InitFlags::FUSE_SETXATTR_EXT {
                n.setxattr_ext = true;
            }
        }
        if self.want_uring {
            n.uring = config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
        }
        n.max_write = match config.set_max_write(MAX_WRITE) {
            Ok(_) => MAX_WRITE,
            Err(nearest) => {
                tracing::debug!(max_write = nearest, "the largest write size on offer");
                let _ = config.set_max_write(nearest);
                nearest
            }
        };
        // Readahead as large as the largest write, if the kernel allows:
        // the ring's payload buffers are sized by the larger of the two.
        n.max_readahead = match config.set_max_readahead(n.max_write) {
            Ok(_) => n.max_write,
            Err(nearest) => {
                let _ = config.set_max_readahead(nearest);
                nearest
            }
        };
        *self.result.lock() = Some(n);
        Ok(())
    }
}

/// The fuser configuration for a mount.
fn config(opts: &MountOpts) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::FSName("zippyfs".into()),
        MountOption::Subtype("zippyfs".into()),
        MountOption::DefaultPermissions,
    ];
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        c.acl = SessionACL::All;
    }
    for o in opts.options.iter().filter(|o| !o.is_empty()) {
        match mount_option(o) {
            UserOption::Mount(m) => c.mount_options.push(m),
            UserOption::Acl(acl) => c.acl = acl,
        }
    }
    c
}

enum UserOption {
    Mount(MountOption),
    Acl(SessionACL),
}

/// A `-o` option as fuser wants it. fuser 0.18 has no `allow_other` /
/// `allow_root` mount options (they are [`SessionACL`]s), and sends a
/// `CUSTOM` option to the kernel as it is, so the options the kernel takes
/// as mount flags (`nosuid`, `noexec`, ...) must be named.
fn mount_option(o: &str) -> UserOption {
    UserOption::Mount(match o {
        "allow_other" => return UserOption::Acl(SessionACL::All),
        "allow_root" => return UserOption::Acl(SessionACL::RootAndOwner),
        "auto_unmount" => MountOption::AutoUnmount,
        "default_permissions" => MountOption::DefaultPermissions,
        "dev" => MountOption::Dev,
        "nodev" => MountOption::NoDev,
        "suid" => MountOption::Suid,
        "nosuid" => MountOption::NoSuid,
        "ro" => MountOption::RO,
        "rw" => MountOption::RW,
        "exec" => MountOption::Exec,
        "noexec" => MountOption::NoExec,
        "atime" => MountOption::Atime,
        "noatime" => MountOption::NoAtime,
        "dirsync" => MountOption::DirSync,
        "sync" => MountOption::Sync,
        "async" => MountOption::Async,
        _ => MountOption::CUSTOM(o.to_string()),
    })
}

/// The kernel answers an option it does not know with a bare EINVAL; name
/// the options that went to it unchecked, so a typo is easy to spot.
fn explain_rejected_options(error: io::Error, opts: &MountOpts) -> io::Error {
    let passed: Vec<&str> = opts
        .options
        .iter()
        .map(String::as_str)
        .filter(|o| matches!(mount_option(o), UserOption::Mount(MountOption::CUSTOM(_))))
        .collect();
    // fuser reports a failed mount(2) as text ("... EINVAL: Invalid
    // argument"), not as an OS error code.
    let einval = error.raw_os_error() == Some(libc::EINVAL) || error.to_string().contains("EINVAL");
    if !einval || passed.is_empty() {
        return error;
    }
    io::Error::new(
        error.kind(),
        format!(
            "{error}; the kernel may have refused an option zippyfs does not know and passed on: {}",
            passed.join(", ")
        ),
    )
}

/// Mounts `fs` on `mountpoint` and serves it in the calling thread until it
/// is unmounted (by `umount`, or SIGINT/SIGTERM); the final commit has run
/// when this returns.
pub fn mount(fs: Arc<Fs>, mountpoint: &Path, opts: &MountOpts) -> Result<(), MountError> {
    mount_and_notify(fs, mountpoint, opts, || {})
}

/// [`mount`], calling `live` once the mount is live: mounted, with the
/// kernel's INIT answered (fuser's `Session::new` does both before it
/// returns). Requests made from then on wait until the transport starts,
/// right after `live` returns.
pub fn mount_and_notify(
    fs: Arc<Fs>,
    mountpoint: &Path,
    opts: &MountOpts,
    live: impl FnOnce(),
) -> Result<(), MountError> {
    let result = run_session(Arc::clone(&fs), mountpoint, opts, live);
    // Whatever happened, the rest is committed and the committer stops.
    if let Err(e) = fs.shutdown() {
        let (inodes, bytes, names) = fs.unsaved();
        let lost = MountError::FinalCommit {
            error: e.to_string(),
            failure: fs.failure().map(str::to_string),
            inodes,
            bytes,
            names: names.join(", "),
            version: fs.store().latest_version().unwrap_or(0),
        };
        tracing::error!("{lost}");
        if let Err(session) = result {
            tracing::error!("{session}");
        }
        return Err(lost);
    }
    if result.is_ok() {
        tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
    }
    result
}

/// Whether to ask for io_uring at INIT. `uring` on a kernel that has it
/// turned off is an error naming the switch.
fn want_uring(t: Transport) -> Result<bool, MountError> {
    if t == Transport::Classic {
        return Ok(false);
    }
    // io_uring itself may be off (kernel.io_uring_disabled, a seccomp
    // profile): find out before asking the kernel for FUSE over it.
    if let Err(why) = ring::probe() {
        if t == Transport::Uring {
            return Err(MountError::Transport(why));
        }
        tracing::info!("transport: classic /dev/fuse, because {why}");
        return Ok(false);
    }
    match (t, ring::abi::kernel_enables_uring()) {
        (Transport::Classic, _) => Ok(false),
        (_, Ok(true)) => Ok(true),
        (Transport::Uring, Ok(false)) => Err(MountError::Transport(format!(
            "FUSE over io_uring is turned off: {} is N. As root, turn it on with `echo Y > {}` \
             (or boot with fuse.enable_uring=1), or use --transport classic",
            ring::abi::ENABLE_URING_PARAM,
            ring::abi::ENABLE_URING_PARAM
        ))),
        (Transport::Uring, Err(why)) => Err(MountError::Transport(why)),
        (Transport::Auto, Ok(false)) => {
            tracing::info!(
                "transport: classic /dev/fuse, because {} is N (set it to Y for io_uring)",
                ring::abi::ENABLE_URING_PARAM
            );
            Ok(false)
        }
        (Transport::Auto, Err(why)) => {
            tracing::info!("transport: classic /dev/fuse, because {why}");
            Ok(false)
        }
    }
}

fn run_session(
    fs: Arc<Fs>,
    mountpoint: &Path,
    opts: &MountOpts,
    live: impl FnOnce(),
) -> Result<(), MountError> {
    let want_uring = want_uring(opts.transport)?;
    // Handlers first, so a signal during the mount is not fatal (a process
    // killed while mounted leaves a dead mount behind).
    let signals = Signals::install(mountpoint).map_err(MountError::Signals)?;
    let result = Arc::new(Mutex::new(None));
    let negotiate = Negotiate {
        want_uring,
        want_writeback: opts.writeback_cache,
        result: Arc::clone(&result),
    };
    let mut session =
        Session::new(negotiate, mountpoint, &config(opts)).map_err(|error| MountError::Mount {
            path: mountpoint.to_path_buf(),
            error: explain_rejected_options(error, opts),
        })?;
    let Some(n) = *result.lock() else {
        return Err(MountError::Session(io::Error::other(
            "the kernel's INIT was never answered",
        )));
    };
    if !n.setxattr_ext {
        return Err(MountError::Session(io::Error::other(
            "the kernel does not offer FUSE_SETXATTR_EXT (Linux 5.16 or later is needed)",
        )));
    }
    let uring = match (want_uring, n.uring) {
        (true, false) if opts.transport == Transport::Uring => {
            return Err(MountError::Transport(
                "the kernel did not offer FUSE_OVER_IO_URING at INIT".into(),
            ));
        }
        (true, false) => {
            tracing::info!(
                "transport: classic /dev/fuse, because the kernel did not offer io_uring at INIT"
            );
            false
        }
        (u, _) => u,
    };
    signals.arm(session.unmount_callable());
    let dev = mount_device(mountpoint);
    if let Some(ratio) = opts.kernel_dirty_ratio {
        tune_writeback(dev.as_deref(), ratio);
    }
    let mut ops = Ops::new(Arc::clone(&fs), n.writeback, opts.ttl);
    match session.as_fd().try_clone_to_owned() {
        Ok(fd) => ops.notify_through(fd),
        Err(e) => tracing::warn!("no notifications to the kernel: {e}"),
    }
    *ops.counts.transport.lock() = if uring { "uring" } else { "classic" };
    fs.attach_kernel(Arc::new(notify::Kernel {
        counts: ops.counts.clone(),
        notify: session.as_fd().try_clone_to_owned().ok(),
        no_prune: Default::default(),
    }));
    live();
    let threads = opts.threads.max(1);
    let fd = session.as_fd();
    let r = if uring {
        tracing::info!(mountpoint = %mountpoint.display(), threads, queue_depth = opts.queue_depth, "mounted; transport: io_uring");
        let abort = || abort_connection(mountpoint);
        ring::serve(
            &ops,
            fd,
            threads,
            opts.queue_depth,
            ring::payload_len(n.max_write, n.max_readahead),
            &abort,
        )
    } else {
        tracing::info!(mountpoint = %mountpoint.display(), threads, "mounted; transport: classic /dev/fuse");
        serve_classic(&ops, fd, threads, n.max_write)
    };
    // The connection is gone; `session` unmounts (if that is still to do)
    // when it drops.
    drop(signals);
    r.map_err(MountError::Session)
}

/// Lets the kernel hold up to `ratio`% of the system's dirty page cache for
/// this mount and lifts the strict per-mount limit the kernel puts on every
/// FUSE filesystem (1%, strict: a writer is throttled to the daemon's pace
/// as soon as the mount has a few tens of MiB dirty, so random writes are
/// written back page by page). The kernel does that to protect itself from
/// untrusted daemons; a root daemon may relax it. Best effort: without the
/// right (not root) the defaults stay, and the log says so.
fn tune_writeback(dev: Option<&str>, ratio: u32) {
    let Some(dev) = dev else {
        tracing::info!("writeback limits left as they are: the mount's device was not found");
        return;
    };
    let bdi = PathBuf::from("/sys/class/bdi").join(dev);
    for (knob, value) in [("strict_limit", 0), ("max_ratio", ratio.min(100))] {
        if let Err(e) = std::fs::write(bdi.join(knob), format!("{value}\n")) {
            tracing::info!(
                "writeback limit {knob} left as it is ({}: {e})",
                bdi.display()
            );
            return;
        }
    }
    tracing::debug!(bdi = %bdi.display(), ratio, "writeback limits set");
}

/// Aborts the FUSE connection of the mount at `mountpoint`: a forced
/// unmount makes the kernel abort the connection first (FUSE's
/// `umount_begin`), even when the mount is busy and stays attached; every
/// request then fails and every transport thread sees the end.
fn abort_connection(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path; no other memory is passed.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_FORCE) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            tracing::error!(
                "cannot abort the connection at {}: {e}",
                mountpoint.display()
            );
        }
    }
}

/// `major:minor` of what is mounted at `mountpoint`, from
/// /proc/self/mountinfo (a `stat` of our own mount would wait for us).
fn mount_device(mountpoint: &Path) -> Option<String> {
    let want = mountpoint.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Fields: id parent major:minor root mountpoint ...; the newest mount
    // on a path is listed last.
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let at = f.get(4)?.replace("\\040", " ");
        (Path::new(&at) == want).then(|| f.get(2).map(|d| d.to_string()))?
    })
}

/// The classic transport: `threads` readers of `/dev/fuse`, each on its own
/// clone of the descriptor, pinned one per CPU.
fn serve_classic(
    ops: &Ops,
    fd: std::os::fd::BorrowedFd<'_>,
    threads: usize,
    max_write: u32,
) -> io::Result<()> {
    let clones = (1..threads)
        .map(|_| classic::clone_fd(fd))
        .collect::<io::Result<Vec<_>>>()?;
    let served = &ops.counts.dev;
    let pin = threads > 1;
    let fsyncs = fsyncs::FsyncQueue::new(ops);
    std::thread::scope(|s| {
        let fsyncs = &fsyncs;
        let fsync_thread = fsyncs.spawn(s)?;
        let workers = clones
            .iter()
            .enumerate()
            .map(|(i, c)| {
                std::thread::Builder::new()
                    .name(format!("zippy-fuse-{}", i + 1))
                    .spawn_scoped(s, move || {
                        pin_me(i + 1, pin);
                        classic::serve(ops, c.as_fd(), max_write, served, fsyncs)
                    })
            })
            .collect::<io::Result<Vec<_>>>();
        let r = match workers {
            Ok(workers) => {
                pin_me(0, pin);
                join_all(classic::serve(ops, fd, max_write, served, fsyncs), workers)
            }
            Err(e) => Err(e),
        };
        fsyncs.stop();
        let _ = fsync_thread.join();
        r
    })
}

/// Waits for every worker; the first error wins (`first`, the calling
/// thread's own result, before the workers').
pub(crate) fn join_all(
    first: io::Result<()>,
    workers: Vec<std::thread::ScopedJoinHandle<'_, io::Result<()>>>,
) -> io::Result<()> {
    let mut r = first;
    for w in workers {
        let wr = w
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a transport thread panicked")));
        if r.is_ok() {
            r = wr;
        }
    }
    r
}

/// Pins the calling thread, worker `i`, to CPU `i` (mod the CPU count):
/// thread-per-core.
pub(crate) fn pin_me(i: usize, pin: bool) {
    if !pin {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    if let Err(e) = crate::shard::pin_thread(tid, i % cpus) {
        tracing::warn!(tid, "could not pin FUSE thread {i}: {e}");
    }
}
