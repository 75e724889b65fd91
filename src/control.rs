//! The mount daemon's control socket: how `zippyfs gc`, `fsck`, `status`
//! and `umount` talk to a live mount. No pid files and no signals: a
//! request names the store directory it is for (the socket lives in it),
//! the daemon checks who is asking, and the answer (an error included)
//! comes back to the command.
//!
//! ## Protocol (version 1)
//!
//! A unix stream socket, `<store-dir>/control.sock`, made by the daemon
//! when it starts and removed when it exits. Only root and the daemon's own
//! user may use it: the daemon reads the caller's uid with `SO_PEERCRED` and
//! refuses anyone else.
//!
//! ```text
//! request: one line of JSON   {"v": 1, "op": "gc" | "fsck" | "status" | "wait" | "retention", ...}
//! answer:  zero or more lines {"progress": [done, total]}      (fsck only)
//!          then one line      {"ok": true, ...} | {"ok": false, "error": "..."}
//! ```
//!
//! - `gc`: re-reads the retention policy and commits; `before` and
//!   `after` hold `{versions, retained_pages, free_pages, file_bytes}`.
//! - `fsck`: checks the store while serving; `problems` (a count) and
//!   `report` (the text `zippyfs fsck` prints).
//! - `retention` (with `"policy"`: the text form of `Retention`): keeps the
//!   policy in the store by a commit that may use the reserve (so it works
//!   on a full disk) and applies it; `policy` holds the policy now in force.
//! - `status`: `status` holds what `.zippy/daemon.json` shows, and the
//!   `mountpoint`.
//! - `wait`: answered only when the daemon is about to exit, with the
//!   outcome of its final commit (`zippyfs umount` waits on it).
//!
//! The connection closes after the final line. A request of another
//! version, or an unknown op, is answered `{"ok": false, ...}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde_json::{Value, json};

use crate::fs::Fs;

/// The socket's name inside the store directory.
pub const SOCKET: &str = "control.sock";
/// The protocol version this build speaks.
pub const VERSION: u64 = 1;
/// The longest request line taken.
const MAX_REQUEST: u64 = 4096;

/// How the daemon's life ended, for `wait` requests.
#[derive(Default)]
struct Exit {
    outcome: Option<Result<(), String>>,
    /// `wait` requests not yet answered: the daemon must not exit before.
    waiting: usize,
}

/// The daemon side: a thread accepting requests until [`Server::stop`].
pub struct Server {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    exit: Arc<(Mutex<Exit>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on `<store_dir>/control.sock` and serves `fs`. The caller
    /// holds the store's lock, so a socket left there is a dead daemon's
    /// and is replaced.
    pub fn start(store_dir: &Path, mountpoint: &Path, fs: Arc<Fs>) -> std::io::Result<Server> {
        let path = store_dir.join(SOCKET);
        let listener = Address::of(&path)?.bind().or_else(|e| {
            if e.kind() != std::io::ErrorKind::AddrInUse {
                return Err(e);
            }
            std::fs::remove_file(&path)?;
            Address::of(&path)?.bind()
        })?;
        let stopping = Arc::new(AtomicBool::new(false));
        let exit = Arc::new((Mutex::new(Exit::default()), Condvar::new()));
        let (stop, ex) = (Arc::clone(&stopping), Arc::clone(&exit));
        let mountpoint = mountpoint.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("zippy-control".into())
            .spawn(move || accept_loop(listener, fs, mountpoint, stop, ex))?;
        Ok(Server {
            path,
            stopping,
            exit,
            thread: Some(thread),
        })
    }

    /// Stops listening and removes the socket, runs `close` (which lets the
    /// store go), then answers every `wait` with `outcome`: a command that
    /// waited may mount the store again at once.
    pub fn stop(mut self, outcome: Result<(), String>, close: impl FnOnce()) {
        self.shutdown();
        close();
        let (m, cv) = &*self.exit;
        let mut e = m.lock();
        e.outcome = Some(outcome);
        cv.notify_all();
        // Each waiter writes its answer before the process may exit
        // (bounded: a waiter whose caller stopped reading may block).
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while e.waiting > 0 && !cv.wait_until(&mut e, until).timed_out() {}
    }

    fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wake the accept with a connection of our own.
        if let Ok(a) = Address::of(&self.path) {
            let _ = a.connect();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let (m, cv) = &*self.exit;
            m.lock()
                .outcome
                .get_or_insert(Err("the daemon stopped".into()));
            cv.notify_all();
            self.shutdown();
        }
    }
}

fn accept_loop(
    listener: UnixListener,
    fs: Arc<Fs>,
    mountpoint: PathBuf,
    stopping: Arc<AtomicBool>,
    exit: Arc<(Mutex<Exit>, Condvar)>,
) {
    for conn in listener.incoming() {
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // gc and fsck may take minutes, `wait` lasts until exit: a thread
        // each, so one request never holds up another.
        let (fs, exit, mp) = (Arc::clone(&fs), Arc::clone(&exit), mountpoint.clone());
        let spawned = std::thread::Builder::new()
            .name("zippy-request".into())
            .spawn(move || {
                if let Err(e) = serve(conn, fs, &mp, &exit) {
                    tracing::debug!("control request: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!("control socket: cannot start a request thread: {e}");
        }
    }
}

/// Who may ask: root, and the daemon's own user. (And, seen from a
/// command, who may answer: a socket named by a file inside a mount is
/// only trusted if root or the caller's own user serves it.)
fn allowed(conn: &UnixStream) -> Result<u32, String> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred
    // valid for writes; the descriptor is the connection we own.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot tell who is asking: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid == 0 || cred.uid == me {
        Ok(cred.uid)
    } else {
        Err(format!(
            "permission denied: uid {} is neither root nor the daemon's user ({me})",
            cred.uid
        ))
    }
}

fn serve(
    conn: UnixStream,
    fs: Arc<Fs>,
    mountpoint: &Path,
    exit: &(Mutex<Exit>, Condvar),
) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let answer = |out: &mut UnixStream, v: Value| -> std::io::Result<()> {
        writeln!(out, "{v}")?;
        out.flush()
    };
    let uid = match allowed(&conn) {
        Ok(uid) => uid,
        Err(why) => return answer(&mut out, json!({"ok": false, "error": why})),
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line)?;
    let req: Value = match serde_json::from_str(&line) {
        Ok(v) => v,
        Err(e) => {
            let error = format!("a request is one line of JSON: {e}");
            return answer(&mut out, json!({"ok": false, "error": error}));
        }
    };
    if req["v"].as_u64() != Some(VERSION) {
        let error = format!(
            "protocol version {} asked, this daemon speaks {VERSION}",
            req["v"]
        );
        return answer(&mut out, json!({"ok": false, "error": error}));
    }
    let op = req["op"].as_str().unwrap_or("");
    tracing::info!(uid, op, "control request");
    let result = match op {
        "gc" => gc(&fs),
        "fsck" => fsck(&fs, &mut out),
        "retention" => match req["policy"].as_str().map(crate::store::Retention::parse) {
            Some(Ok(p)) => fs
                .set_retention(p)
                .map(|()| json!({ "policy": fs.store().retention().to_text() }))
                .map_err(|e| format!("retention: {e}")),
            Some(Err(e)) => Err(format!("retention: {e}")),
            None => Err("retention: the request holds no policy".into()),
        },
        "status" => {
            let mut st = fs.status();
            st["mountpoint"] = json!(mountpoint.display().to_string());
            Ok(json!({ "status": st }))
        }
        "wait" => {
            // Not holding the filesystem (and its store) open meanwhile.
            drop(fs);
            let (m, cv) = exit;
            let mut e = m.lock();
            e.waiting += 1;
            while e.outcome.is_none() {
                cv.wait(&mut e);
            }
            let outcome = e.outcome.clone();
            drop(e);
            let v = match outcome {
                Some(Err(error)) => json!({"ok": false, "error": error}),
                _ => json!({"ok": true}),
            };
            let r = answer(&mut out, v);
            m.lock().waiting -= 1;
            cv.notify_all();
            return r;
        }
        _ => Err(format!(
            "unknown request {op:?} (gc, fsck, status, wait, retention)"
        )),
    };
    let v = match result {
        Ok(mut v) => {
            v["ok"] = json!(true);
            v
        }
        Err(error) => json!({"ok": false, "error": error}),
    };
    answer(&mut out, v)
}

fn space(fs: &Fs) -> Value {
    let st = fs.store().stats();
    json!({
        "versions": st.versions,
        "retained_pages": st.retained_pages,
        "free_pages": st.free_pages,
        "file_bytes": st.file_bytes,
    })
}

fn gc(fs: &Fs) -> Result<Value, String> {
    let before = space(fs);
    fs.gc().map_err(|e| format!("gc: {e}"))?;
    Ok(json!({"before": before, "after": space(fs)}))
}

/// Checks the store, telling the caller the progress every quarter second.
fn fsck(fs: &Fs, out: &mut UnixStream) -> Result<Value, String> {
    let done = AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        let progress = s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(250));
                let (checked, total) = fs.fsck_progress();
                // A caller that left does not stop the check.
                let _ = writeln!(out, "{}", json!({"progress": [checked, total]}));
            }
        });
        let r = fs.fsck();
        done.store(true, Ordering::Release);
        let _ = progress.join();
        r
    });
    let report = report.map_err(|e| format!("fsck: {e}"))?;
    let (mut text, mut problems) = (report.to_string(), report.problems.len());
    if let Some((more, n)) = fs.sync_fsck() {
        text.push_str(&more);
        problems += n;
    }
    Ok(json!({"problems": problems, "report": text}))
}

/// A socket address for a path of any length: paths longer than
/// `sun_path` go through `/proc/self/fd/N/` of the directory, opened for
/// the call.
struct Address {
    short: PathBuf,
    _dir: Option<std::fs::File>,
}

impl Address {
    fn of(path: &Path) -> std::io::Result<Address> {
        const SUN_PATH: usize = 100;
        if path.as_os_str().len() < SUN_PATH {
            return Ok(Address {
                short: path.to_path_buf(),
                _dir: None,
            });
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(std::io::Error::other("no directory"));
        };
        let d = std::fs::File::open(dir)?;
        Ok(Address {
            short: PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd())).join(name),
            _dir: Some(d),
        })
    }

    fn bind(&self) -> std::io::Result<UnixListener> {
        UnixListener::bind(&self.short)
    }

    fn connect(&self) -> std::io::Result<UnixStream> {
        UnixStream::connect(&self.short)
    }
}

/// The command side: sends `op` to the daemon serving the store in
/// `store_dir`. `Ok(None)`: no daemon serves that store.
pub fn send(store_dir: &Path, op: &str) -> Result<Option<Pending>, String> {
    send_request(store_dir, json!({ "op": op }))
}

/// [`send`] with the request's other fields (`request` holds `op`).
pub fn send_request(store_dir: &Path, mut request: Value) -> Result<Option<Pending>, String> {
    request["v"] = json!(VERSION);
    let path = store_dir.join(SOCKET);
    let conn = match Address::of(&path).and_then(|a| a.connect()) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(format!(
                "cannot reach the daemon at {}: {e}",
                path.display()
            ));
        }
    };
    allowed(&conn).map_err(|why| format!("{}: not a daemon to trust: {why}", path.display()))?;
    let io = |e: std::io::Error| format!("talking to the daemon at {}: {e}", path.display());
    writeln!(&conn, "{request}").map_err(io)?;
    Ok(Some(Pending { conn, path }))
}

/// A request sent, its answer still to come.
pub struct Pending {
    conn: UnixStream,
    path: PathBuf,
}

impl Pending {
    /// Waits for the final answer, passing each progress line to `progress`.
    pub fn answer(self, mut progress: impl FnMut(u64, u64)) -> Result<Value, String> {
        let Pending { conn, path } = self;
        let io = |e: std::io::Error| format!("talking to the daemon at {}: {e}", path.display());
        for line in BufReader::new(&conn).lines() {
            let line = line.map_err(io)?;
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| format!("the daemon's answer is not JSON ({e}): {line}"))?;
            if let Some(p) = v["progress"].as_array() {
                let n = |i: usize| p.get(i).and_then(Value::as_u64).unwrap_or(0);
                progress(n(0), n(1));
                continue;
            }
            if v["ok"] == json!(true) {
                return Ok(v);
            }
            return Err(v["error"]
                .as_str()
                .unwrap_or("the daemon refused without a reason")
                .to_string());
        }
        Err(format!(
            "the daemon at {} closed the connection without an answer (see its log)",
            path.display()
        ))
    }
}

/// Sends `op` to the daemon serving the store in `store_dir` and waits for
/// its final answer, passing each progress line to `progress`. `Ok(None)`:
/// no daemon serves that store.
pub fn ask(
    store_dir: &Path,
    op: &str,
    progress: impl FnMut(u64, u64),
) -> Result<Option<Value>, String> {
    match send(store_dir, op)? {
        Some(p) => p.answer(progress).map(Some),
        None => Ok(None),
    }
}
