//! SIGINT and SIGTERM unmount (a handler writes the signal number into a
//! pipe, and a watcher thread reading the pipe unmounts through fuser's
//! [`SessionUnmounter`]: a plain `umount(2)`, or if the filesystem is busy a
//! lazy `MNT_DETACH` unmount, after which the session ends when the last
//! user lets go of it). Nothing else is asked of the daemon by signal: the
//! commands that talk to it use its control socket (`crate::control`).

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use fuser::SessionUnmounter;
use parking_lot::Mutex;

/// The write end of the signal pipe, for the handler; -1 when none.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// What the watcher reads to stop.
const STOP: u8 = 0;

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives across the call
        // and the descriptor is non-blocking, so this never waits. A full
        // pipe (many signals at once) loses a byte, which is harmless.
        unsafe {
            libc::write(fd, (&raw const b).cast(), 1);
        }
    }
}

struct Armed {
    unmounter: Option<SessionUnmounter>,
    /// A signal came before the session existed.
    pending: bool,
}

/// SIGINT/SIGTERM handlers that unmount, while a mount runs.
pub struct Signals {
    writer: io::PipeWriter,
    /// The mountpoint, canonical, for a lazy unmount.
    path: PathBuf,
    watcher: Option<std::thread::JoinHandle<()>>,
    armed: Arc<Mutex<Armed>>,
    old: Vec<(libc::c_int, libc::sigaction)>,
}

/// SIGINT and SIGTERM unmount.
const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

impl Signals {
    pub fn install(mountpoint: &Path) -> io::Result<Signals> {
        let (mut reader, writer) = io::pipe()?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&writer);
        // SAFETY: fcntl on a descriptor we own; no memory is passed.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if SIGNAL_PIPE
            .compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(io::Error::other(
                "another mount in this process handles the signals",
            ));
        }
        let armed = Arc::new(Mutex::new(Armed {
            unmounter: None,
            pending: false,
        }));
        let path = mountpoint
            .canonicalize()
            .unwrap_or_else(|_| mountpoint.to_path_buf());
        let watch = Arc::clone(&armed);
        let watch_path = path.clone();
        let watcher = std::thread::Builder::new()
            .name("zippy-signals".into())
            .spawn(move || {
                let mut b = [0u8; 1];
                loop {
                    match reader.read(&mut b) {
                        Ok(0) => return,
                        Ok(_) if b[0] == STOP => return,
                        Ok(_) => {
                            tracing::info!(signal = b[0], "signal received: unmounting");
                            let mut a = watch.lock();
                            match a.unmounter.as_mut() {
                                Some(u) => unmount(u, &watch_path),
                                None => a.pending = true,
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::error!("signal pipe: {e}");
                            return;
                        }
                    }
                }
            });
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                SIGNAL_PIPE.store(-1, Ordering::Release);
                return Err(e);
            }
        };
        let mut s = Signals {
            writer,
            path,
            watcher: Some(watcher),
            armed,
            old: Vec::new(),
        };
        for sig in SIGNALS {
            // SAFETY: sigaction is a plain C struct of integers, function
            // pointers and a signal set, for which all-zero is valid.
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction =
                on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
            act.sa_flags = libc::SA_RESTART;
            // SAFETY: `act.sa_mask` is a valid signal set to initialise.
            unsafe { libc::sigemptyset(&mut act.sa_mask) };
            // SAFETY: valid pointers to initialised structs; the handler
            // only does async-signal-safe work.
            if unsafe { libc::sigaction(sig, &act, &mut old) } != 0 {
                return Err(io::Error::last_os_error()); // `s` restores the others
            }
            s.old.push((sig, old));
        }
        Ok(s)
    }

    /// From now on a signal unmounts through `u` (at once, if one came).
    pub fn arm(&self, mut u: SessionUnmounter) {
        let mut a = self.armed.lock();
        if a.pending {
            unmount(&mut u, &self.path);
        }
        a.unmounter = Some(u);
    }
}

/// Unmounts; if the filesystem is busy, detaches it (lazy unmount: the
/// session ends once the last open file or working directory in it goes).
fn unmount(u: &mut SessionUnmounter, path: &Path) {
    let Err(e) = u.unmount() else { return };
    tracing::info!(
        "unmount failed ({e}); detaching instead: the filesystem goes when its last user leaves"
    );
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path; no other memory is passed.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        tracing::error!(
            "lazy unmount of {} failed: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for (sig, old) in self.old.drain(..) {
            // SAFETY: restores the action saved by `install`.
            unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
        }
        SIGNAL_PIPE.store(-1, Ordering::Release);
        // The pipe is non-blocking: if it is full, the watcher has bytes to
        // read anyway; retry until the stop byte is in.
        while let Err(e) = self.writer.write_all(&[STOP]) {
            if e.kind() != io::ErrorKind::WouldBlock {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}
