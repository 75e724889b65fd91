//! Sync for integration tests: a real `zippyfs serve` process, peers that
//! joined it (each a real mount of its own store), and what tests compare.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Mounted, bin};

/// A running `zippyfs serve`, killed (by its PID) when dropped.
pub struct Server {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    pub fingerprint: String,
    args: Vec<String>,
}

/// Starts `zippyfs serve` in `dir` on `port` (0: any); returns it, the
/// port it bound and the fingerprint it printed.
fn spawn_server(dir: &Path, port: u16, args: &[String]) -> (Child, u16, String) {
    let mut child = Command::new(bin())
        .arg("serve")
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("serve.log"))
                .expect("server log"),
        ))
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
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// [`Server::start`] with extra arguments (`--keep-log 5`, say), kept
    /// for restarts.
    pub fn start_with(args: &[&str]) -> Server {
        Self::start_at(tempfile::tempdir().expect("server dir"), args)
    }

    /// [`Server::start`] with its directory in `parent` (a small disk, say).
    pub fn start_in(parent: &Path) -> Server {
        Self::start_at(tempfile::tempdir_in(parent).expect("server dir"), &[])
    }

    fn start_at(dir: tempfile::TempDir, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, port, fingerprint) = spawn_server(dir.path(), 0, &args);
        Server {
            dir,
            child: Some(child),
            port,
            fingerprint,
            args,
        }
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again, on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let (child, port, fingerprint) = spawn_server(self.dir.path(), self.port, &self.args);
        assert_eq!((port, &fingerprint), (self.port, &self.fingerprint));
        self.child = Some(child);
    }

    /// A new peer of `volume`: its credential in a file.
    pub fn add_peer(&self, name: &str, volume: &str, into: &Path) -> PathBuf {
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

    pub fn url(&self, volume: &str) -> String {
        format!("quic://127.0.0.1:{}/{volume}", self.port)
    }

    /// What the server logged (standard error).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn status(&self) -> serde_json::Value {
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
pub fn peer(server: &Server, name: &str, volume: &str, work: &Path) -> Mounted {
    peer_at(server, &server.url(volume), name, volume, work)
}

/// [`peer`], reaching the server at `url` (through a proxy, say).
pub fn peer_at(server: &Server, url: &str, name: &str, volume: &str, work: &Path) -> Mounted {
    peer_with(server, url, name, volume, work, &[])
}

/// [`peer_at`], mounted with these extra arguments.
pub fn peer_with(
    server: &Server,
    url: &str,
    name: &str,
    volume: &str,
    work: &Path,
    args: &[&str],
) -> Mounted {
    let store = work.join(format!("{name}-store"));
    let cred = server.add_peer(name, volume, work);
    let st = Command::new(bin())
        .arg("join")
        .arg(&store)
        .arg(url)
        .args(["--fingerprint", &server.fingerprint])
        .arg("--credential")
        .arg(&cred)
        .stdout(Stdio::null())
        .status()
        .expect("join");
    assert!(st.success(), "join failed");
    Mounted::start_logged(&store, args, &work.join(format!("{name}.log")))
}

/// A real server and two peers of its volume "v", `a` and `b`, each a
/// real mount, in a directory of their own: `let (work, server, a, b) =
/// two_peers();`, bound in that order so that the mounts go first, then
/// the server, and the directory last (name one left unused `_work`,
/// never `_`, which would drop it at once).
pub fn two_peers() -> (tempfile::TempDir, Server, Mounted, Mounted) {
    let work = tempfile::tempdir().expect("a work directory");
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", work.path());
    (work, server, a, b)
}

/// Waits (bounded) until `check` holds; returns how long it took.
pub fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

/// Writes `name` on `from` and waits (bounded) until `to` reads it whole.
pub fn written_and_seen(from: &Mounted, to: &Mounted, name: &str, data: &[u8]) {
    std::fs::write(from.path().join(name), data).expect("write on the first peer");
    eventually(
        &format!("{name} on the other peer"),
        Duration::from_secs(20),
        || std::fs::read(to.path().join(name)).is_ok_and(|d| d == data),
    );
}

/// Every file under `root` (not the history directory): relative path →
/// contents (a symlink's target, `<dir>` for a directory).
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
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

/// A small deterministic generator (splitmix64) for the tests' histories.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 for `n` 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `m` as a frame on the wire (for a peer or a server of a test's own).
pub fn frame(m: &zippyfs::sync::wire::Msg) -> Vec<u8> {
    let mut b = Vec::new();
    m.encode(&mut b).expect("an encodable message");
    b
}

/// One frame from a QUIC stream, or `None` when it ends.
pub async fn next_frame(recv: &mut quinn::RecvStream) -> Option<zippyfs::sync::wire::Msg> {
    let mut h = [0u8; zippyfs::sync::wire::HEADER];
    recv.read_exact(&mut h).await.ok()?;
    let (kind, len) = zippyfs::sync::wire::header(&h).expect("a valid header");
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.ok()?;
    Some(zippyfs::sync::wire::Msg::decode(kind, &body).expect("a valid frame"))
}

/// The ops that make `name` (id `fid`) in the root: a directory, or a
/// file made of `blocks` (each named by its BLAKE3 hash).
pub fn made_in_root(
    kind: zippyfs::fs::Kind,
    fid: u128,
    name: &str,
    blocks: &[Vec<u8>],
) -> Vec<zippyfs::sync::tree::Op> {
    use zippyfs::sync::tree::{Meta, Op};
    let dir = kind == zippyfs::fs::Kind::Dir;
    vec![
        Op::Node {
            fid,
            whole: true,
            meta: Meta {
                kind,
                perm: if dir { 0o755 } else { 0o644 },
                uid: 0,
                gid: 0,
                rdev: 0,
                size: blocks.iter().map(|b| b.len() as u64).sum(),
                mtime: zippyfs::fs::Time::default(),
            },
            cut: None,
            blocks: (blocks.iter().enumerate())
                .map(|(i, b)| (i as u64, Some(*blake3::hash(b).as_bytes())))
                .collect(),
            xattrs: vec![],
            target: (!dir).then(Vec::new),
        },
        Op::Names {
            fid,
            removed: vec![],
            added: vec![(1, name.as_bytes().to_vec())],
        },
    ]
}
