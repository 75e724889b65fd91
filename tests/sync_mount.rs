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
    child: Child,
    port: u16,
    fingerprint: String,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("server dir");
        Server::start_in(dir)
    }

    fn start_in(dir: tempfile::TempDir) -> Server {
        let mut child = Command::new(bin())
            .arg("serve")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn zippyfs serve");
        let out = child.stdout.take().expect("server stdout");
        let mut lines = BufReader::new(out).lines();
        let mut port = 0;
        let mut fingerprint = String::new();
        for line in lines.by_ref().take(2) {
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
        Server {
            dir,
            child,
            port,
            fingerprint,
        }
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
        let _ = self.child.kill();
        let _ = self.child.wait();
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
