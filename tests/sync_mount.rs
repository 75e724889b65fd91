//! Sync on real mounts: a real `zippyfs serve` process on 127.0.0.1 and
//! peers that joined its volume, each a real mount of its own store.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mounted, bin, fuse_or_skip};

/// A running `zippyfs serve`, killed (by its PID) when dropped.
struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    fingerprint: String,
}

/// Starts `zippyfs serve` in `dir` on `port` (0: any); returns it, the
/// port it bound and the fingerprint it printed.
fn spawn_server(dir: &Path, port: u16) -> (Child, u16, String) {
    let mut child = Command::new(bin())
        .arg("serve")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn zippyfs serve");
    let out = child.stdout.take().expect("server stdout");
    let (mut port, mut fingerprint) = (0, String::new());
    for line in BufReader::new(out).lines().take(2) {
        let line = line.expect("server output");
        if let Some(a) = line.strip_prefix("listening on ") {
            port = a
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
        }
        if let Some(f) = line.strip_prefix("fingerprint ") {
            fingerprint = f.to_string();
        }
    }
    assert!(
        port > 0 && fingerprint.len() == 64,
        "the server did not start"
    );
    (child, port, fingerprint)
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("server dir");
        let (child, port, fingerprint) = spawn_server(dir.path(), 0);
        Server {
            dir,
            child: Some(child),
            port,
            fingerprint,
        }
    }

    /// Kills the server with SIGKILL.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again, on the same port and directory.
    fn restart(&mut self) {
        self.kill();
        let (child, port, fingerprint) = spawn_server(self.dir.path(), self.port);
        assert_eq!((port, &fingerprint), (self.port, &self.fingerprint));
        self.child = Some(child);
    }

    /// A new peer of `volume`: its credential in a file.
    fn add_peer(&self, name: &str, volume: &str, into: &Path) -> PathBuf {
        let out = Command::new(bin())
            .arg("serve")
            .arg(self.dir.path())
            .args(["add-peer", name, "--volume", volume])
            .output()
            .expect("add-peer");
        assert!(out.status.success(), "add-peer: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let credential = text
            .lines()
            .find(|l| l.starts_with("zpc1-"))
            .expect("a credential line");
        let file = into.join(format!("{name}.credential"));
        std::fs::write(&file, credential).expect("credential file");
        file
    }

    fn url(&self, volume: &str) -> String {
        format!("quic://127.0.0.1:{}/{volume}", self.port)
    }

    fn status(&self) -> serde_json::Value {
        let b = std::fs::read(self.dir.path().join("status.json")).unwrap_or_default();
        serde_json::from_slice(&b).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A store joined to `volume` of `server` as peer `name`, and mounted.
fn peer(server: &Server, name: &str, volume: &str, work: &Path) -> Mounted {
    let store = work.join(format!("{name}-store"));
    let cred = server.add_peer(name, volume, work);
    let st = Command::new(bin())
        .arg("join")
        .arg(&store)
        .arg(server.url(volume))
        .args(["--fingerprint", &server.fingerprint])
        .arg("--credential")
        .arg(&cred)
        .stdout(Stdio::null())
        .status()
        .expect("join");
    assert!(st.success(), "join failed");
    Mounted::start_logged(&store, &[], &work.join(format!("{name}.log")))
}

/// Waits (bounded) until `check` holds; returns how long it took.
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

#[test]
fn a_file_written_and_closed_on_one_peer_is_read_on_the_other() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", work.path());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(a.path().join("hello.bin"), &data).unwrap();
    let took = eventually("the file on b", Duration::from_secs(20), || {
        std::fs::read(b.path().join("hello.bin")).is_ok_and(|d| d == data)
    });
    eprintln!("a -> b: {took:?}");
    // And back, with a directory, a rename and a symlink.
    std::fs::create_dir(b.path().join("d")).unwrap();
    std::fs::write(b.path().join("d/x.txt"), b"from b").unwrap();
    std::fs::rename(b.path().join("hello.bin"), b.path().join("d/moved.bin")).unwrap();
    std::os::unix::fs::symlink("x.txt", b.path().join("d/link")).unwrap();
    eventually("b's changes on a", Duration::from_secs(20), || {
        std::fs::read(a.path().join("d/x.txt")).is_ok_and(|d| d == b"from b")
            && std::fs::read(a.path().join("d/moved.bin")).is_ok_and(|d| d == data)
            && std::fs::read_link(a.path().join("d/link")).is_ok_and(|t| t == Path::new("x.txt"))
            && !a.path().join("hello.bin").exists()
    });
    let st = server.status();
    assert!(st["pushes"].as_u64().unwrap_or(0) >= 2, "{st}");
    a.unmount();
    b.unmount();
}

#[test]
fn a_wrong_fingerprint_or_a_revoked_credential_is_refused() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    // A store pinned to another certificate never connects.
    let store = work.path().join("pinned-wrong");
    let cred = server.add_peer("w", "v", work.path());
    let st = Command::new(bin())
        .arg("join")
        .arg(&store)
        .arg(server.url("v"))
        .args(["--fingerprint", &"ab".repeat(32)])
        .arg("--credential")
        .arg(&cred)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let m = Mounted::start_logged(&store, &[], &work.path().join("w.log"));
    let why = eventually(
        "the refusal in daemon.json",
        Duration::from_secs(20),
        || {
            let s = common::daemon_json(m.path());
            s["sync"]["why"]
                .as_str()
                .is_some_and(|w| w.contains("fingerprint"))
        },
    );
    let _ = why;
    m.unmount();

    // A revoked credential is refused with the reason.
    let r = peer(&server, "r", "v", work.path());
    eventually("connected", Duration::from_secs(20), || {
        common::daemon_json(r.path())["sync"]["connected"] == true
    });
    r.unmount();
    let out = Command::new(bin())
        .arg("serve")
        .arg(server.dir.path())
        .args(["remove-peer", "r"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = Mounted::start_logged(
        &work.path().join("r-store"),
        &[],
        &work.path().join("r2.log"),
    );
    eventually("the revoked peer refused", Duration::from_secs(20), || {
        let s = common::daemon_json(r.path());
        s["sync"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("unknown or revoked credential"))
    });
    r.unmount();
}

/// Every file under `root` (not the history directory): relative path →
/// contents (a symlink's target, `<dir>` for a directory).
fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".zippy" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                todo.push(p);
            } else if ft.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

#[test]
fn a_change_to_a_file_the_other_peer_has_open_and_cached_is_read_there() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", work.path());
    std::fs::write(a.path().join("f"), vec![b'1'; 10_000]).unwrap();
    eventually("v1 on b", Duration::from_secs(20), || {
        std::fs::read(b.path().join("f")).is_ok_and(|d| d == vec![b'1'; 10_000])
    });
    // b holds the file open with its pages cached; a rewrites the middle.
    use std::os::unix::fs::FileExt;
    let open = std::fs::File::open(b.path().join("f")).unwrap();
    let mut buf = vec![0u8; 10_000];
    open.read_exact_at(&mut buf, 0).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(a.path().join("f"))
        .unwrap();
    f.write_all_at(b"22222", 4096).unwrap();
    drop(f);
    let mut want = vec![b'1'; 10_000];
    want[4096..4101].copy_from_slice(b"22222");
    let took = eventually(
        "the change through b's open file",
        Duration::from_secs(20),
        || open.read_exact_at(&mut buf, 0).is_ok() && buf == want,
    );
    eprintln!("a -> b (open, cached): {took:?}");
    assert_eq!(std::fs::metadata(b.path().join("f")).unwrap().len(), 10_000);
    a.unmount();
    b.unmount();
}

#[test]
fn concurrent_edits_offline_keep_both_and_every_peer_converges() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", work.path());
    std::fs::write(a.path().join("doc.txt"), b"base").unwrap();
    std::fs::write(a.path().join("gone.txt"), b"to delete").unwrap();
    eventually("the base on b", Duration::from_secs(20), || {
        std::fs::read(b.path().join("doc.txt")).is_ok_and(|d| d == b"base")
            && b.path().join("gone.txt").exists()
    });
    // The server goes; both peers work offline.
    let mut server = server;
    server.kill();
    std::fs::write(a.path().join("doc.txt"), b"edit from a").unwrap();
    std::fs::write(b.path().join("doc.txt"), b"edit from b").unwrap();
    std::fs::remove_file(a.path().join("gone.txt")).unwrap();
    std::fs::write(b.path().join("gone.txt"), b"modified on b").unwrap();
    for i in 0..20 {
        std::fs::write(a.path().join(format!("a{i}")), format!("{i}")).unwrap();
    }
    common::fsync_root(a.path());
    common::fsync_root(b.path());
    server.restart();
    let took = eventually("the same tree on both", Duration::from_secs(30), || {
        let (ta, tb) = (tree(a.path()), tree(b.path()));
        ta == tb && ta.keys().any(|k| k.contains(".conflict-"))
    });
    eprintln!("converged {took:?} after the server came back");
    let t = tree(a.path());
    let copies: Vec<&String> = t.keys().filter(|k| k.contains(".conflict-")).collect();
    assert_eq!(
        copies.len(),
        1,
        "one conflict copy: {:?}",
        t.keys().collect::<Vec<_>>()
    );
    let copy = copies[0];
    assert!(
        copy.starts_with("doc.conflict-a-") || copy.starts_with("doc.conflict-b-"),
        "{copy}"
    );
    assert!(copy.ends_with(".txt"), "{copy}");
    // Both edits are there, one under the name, one in the copy.
    let mut both = vec![t["doc.txt"].clone(), t[copy].clone()];
    both.sort();
    assert_eq!(both, vec![b"edit from a".to_vec(), b"edit from b".to_vec()]);
    // Modified on b, deleted on a: the modification survives.
    assert_eq!(
        t.get("gone.txt").map(Vec::as_slice),
        Some(&b"modified on b"[..])
    );
    assert_eq!(
        (0..20).filter(|i| t.contains_key(&format!("a{i}"))).count(),
        20
    );
    drop(server);
    a.unmount();
    b.unmount();
}
