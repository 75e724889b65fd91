//! Sync under faults, on real mounts and a real server: a peer offline for
//! 100 versions, the server and a peer killed with SIGKILL mid-transfer,
//! the network cut and lossy (a UDP proxy of the test's own between a peer
//! and the server). After each: convergence, nothing lost, and for the
//! catch-up only the blocks the peer lacked on the wire.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::sync::{
    Server, eventually, frame, made_in_root, next_frame, peer, peer_at, tree, two_peers,
    written_and_seen,
};
use common::{Mounted, fuse_or_skip};

fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// The server's figures once they stop moving (it writes them twice a
/// second).
fn settled(server: &Server) -> serde_json::Value {
    let mut last = server.status();
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let now = server.status();
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn a_store_joined_with_copies_of_the_volumes_files_fetches_only_what_it_lacks() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    // 4 MiB on the volume: 64 blocks.
    let big = content(7, 4 << 20);
    std::fs::write(a.path().join("big"), &big).unwrap();
    common::fsync_root(a.path());
    // Another store, never synced, holds the same bytes under another
    // name, and one block of its own.
    let b_store = work.path().join("b-store");
    let b = Mounted::start(&b_store, &[]);
    let mut mine = big.clone();
    mine[..65536].copy_from_slice(&content(8, 65536));
    std::fs::write(b.path().join("mine"), &mine).unwrap();
    b.unmount();
    let cred = server.add_peer("b", "v", work.path());
    let st = std::process::Command::new(common::bin())
        .arg("join")
        .arg(&b_store)
        .arg(server.url("v"))
        .args(["--fingerprint", &server.fingerprint])
        .arg("--credential")
        .arg(&cred)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "join");
    let before = settled(&server);
    let b = Mounted::start_logged(&b_store, &[], &work.path().join("b.log"));
    eventually("big on b", Duration::from_secs(30), || {
        std::fs::read(b.path().join("big")).is_ok_and(|d| d == big)
    });
    eventually("mine on a", Duration::from_secs(30), || {
        std::fs::read(a.path().join("mine")).is_ok_and(|d| d == mine)
    });
    let after = settled(&server);
    let (blocks_out, blocks_in) = (
        num(&after, "blocks_out") - num(&before, "blocks_out"),
        num(&after, "blocks_in") - num(&before, "blocks_in"),
    );
    eprintln!(
        "joined with copies: {blocks_out} blocks to b, {blocks_in} from b, {} bytes to b, {} \
         from b",
        num(&after, "bytes_out") - num(&before, "bytes_out"),
        num(&after, "bytes_in") - num(&before, "bytes_in"),
    );
    // b found 63 of big's 64 blocks in its own file (its block index:
    // mine differs in the first), the server had 63 of mine's, and a
    // found those 63 in big: mine's first block goes up and down to a,
    // big's first comes down to b.
    assert!(
        blocks_out <= 2,
        "{blocks_out} blocks fetched; a and b lacked one each"
    );
    assert!(
        blocks_in <= 1,
        "{blocks_in} blocks pushed; the server lacked one"
    );
    a.unmount();
    b.unmount();
}

#[test]
fn a_peer_offline_for_100_versions_catches_up_moving_only_the_blocks_it_lacked() {
    if !fuse_or_skip() {
        return;
    }
    let (work, server, a, b) = two_peers();
    // Its two halves are the same: the first 36 blocks changed below
    // stand in two places, and once one changes on b the place b's index
    // names for them is stale (the patch must still find the other).
    let mut want = content(1, 4 << 20).repeat(2);
    std::fs::write(a.path().join("big"), &want).unwrap();
    eventually("big on b", Duration::from_secs(30), || {
        std::fs::read(b.path().join("big")).is_ok_and(|d| d == want)
    });
    let b_store = b.store.clone();
    b.unmount();
    let start = settled(&server);
    // 100 versions on a, each 4 KiB in a different 64 KiB block.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(a.path().join("big"))
        .unwrap();
    for i in 0..100u64 {
        let patch = content(1000 + i, 4096);
        let at = i * 65536 + 1000;
        f.write_all_at(&patch, at).unwrap();
        want[at as usize..at as usize + 4096].copy_from_slice(&patch);
        f.sync_all().unwrap();
    }
    drop(f);
    let before = settled(&server);
    // Pushed as patches against the blocks the server had: the pages
    // written, not the blocks.
    let (patches_in, bytes_in) = (
        num(&before, "patches_in") - num(&start, "patches_in"),
        num(&before, "bytes_in") - num(&start, "bytes_in"),
    );
    eprintln!("a pushed 100 versions: {patches_in} patches, {bytes_in} bytes on the wire");
    assert_eq!(patches_in, 100, "every changed block pushed as a patch");
    assert!(
        bytes_in <= 100 * (4096 + 2048),
        "{bytes_in} bytes pushed for 100 writes of 4 KiB"
    );
    // A window of 16 blocks: most of the 100 change-sets wait to be asked
    // for until those before them are applied.
    let b = Mounted::start_logged(
        &b_store,
        &["-o", "sync_window=1M"],
        &work.path().join("b2.log"),
    );
    let took = eventually("b caught up", Duration::from_secs(30), || {
        std::fs::read(b.path().join("big")).is_ok_and(|d| d == want)
    });
    let after = settled(&server);
    let (blocks, patches, bytes) = (
        num(&after, "blocks_out") - num(&before, "blocks_out"),
        num(&after, "patches_out") - num(&before, "patches_out"),
        num(&after, "bytes_out") - num(&before, "bytes_out"),
    );
    let changed = 100 * 4096u64;
    eprintln!(
        "catch-up of 100 versions in {took:?}: {blocks} blocks ({patches} as patches), {bytes} \
         bytes on the wire for {changed} bytes changed ({:.2}x)",
        bytes as f64 / changed as f64
    );
    // Only the 100 changed blocks, each once, and their metadata.
    assert!(
        blocks <= 100,
        "{blocks} blocks went to the peer, 100 changed"
    );
    // Each as a patch against the block b had in its place: the pages
    // changed, not the 64 KiB blocks.
    assert_eq!(patches, blocks, "every block b lacked came as a patch");
    assert!(
        bytes <= 100 * (4096 + 2048),
        "{bytes} bytes for 100 changes of 4 KiB"
    );
    a.unmount();
    b.unmount();
}

#[test]
fn the_server_killed_mid_transfer_and_a_peer_killed_mid_push_lose_nothing() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", work.path());
    // The server goes while a 64 MiB file is on its way.
    let big = content(7, 64 << 20);
    let base = num(&server.status(), "bytes_in");
    std::fs::write(a.path().join("big"), &big).unwrap();
    let started = Instant::now();
    while num(&server.status(), "bytes_in") < base + (1 << 20)
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_kill = server.status();
    server.kill();
    eprintln!(
        "server killed {:?} after the write, {} bytes in, head {}",
        started.elapsed(),
        num(&at_kill, "bytes_in") - base,
        at_kill["heads"]["v"]
    );
    server.restart();
    eventually(
        "big on b after the server's restart",
        Duration::from_secs(60),
        || std::fs::read(b.path().join("big")).is_ok_and(|d| d == big),
    );
    // A peer goes (SIGKILL) right after committing a new file, mid-push;
    // its next mount pushes it.
    let a_store = a.store.clone();
    let other = content(8, 16 << 20);
    std::fs::write(a.path().join("other"), &other).unwrap();
    common::fsync_root(a.path());
    std::thread::sleep(Duration::from_millis(30));
    a.kill9();
    let a = Mounted::start_logged(&a_store, &[], &work.path().join("a2.log"));
    eventually(
        "other on b after a's restart",
        Duration::from_secs(60),
        || std::fs::read(b.path().join("other")).is_ok_and(|d| d == other),
    );
    assert_eq!(tree(a.path()), tree(b.path()));
    a.unmount();
    b.unmount();
    // The server's store (the same engine as a peer's), killed once more
    // (SIGKILL), checks clean: every page of every kept version.
    server.kill();
    let out = std::process::Command::new(common::bin())
        .arg("fsck")
        .arg(server.dir.path().join("store"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(" 0 problems"),
        "fsck of the server's store: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UDP proxy between one peer and the server that can cut the path or
/// drop every Nth datagram.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    drop_every: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(server_port: u16) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(("127.0.0.1", server_port)).unwrap();
        front.set_nonblocking(true).unwrap();
        back.set_nonblocking(true).unwrap();
        let port = front.local_addr().unwrap().port();
        let (cut, drop_every, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, d, s) = (cut.clone(), drop_every.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut client: Option<SocketAddr> = None;
            let mut n = 0u32;
            // Bounded by the stop flag (set on drop).
            while !s.load(Ordering::Relaxed) {
                let mut moved = false;
                let pass = |n: &mut u32| {
                    *n = n.wrapping_add(1);
                    let every = d.load(Ordering::Relaxed);
                    let dropped = every > 0 && (*n).is_multiple_of(every);
                    !(c.load(Ordering::Relaxed) || dropped)
                };
                if let Ok((len, from)) = front.recv_from(&mut buf) {
                    client = Some(from);
                    moved = true;
                    if pass(&mut n) {
                        let _ = back.send(&buf[..len]);
                    }
                }
                if let Ok(len) = back.recv(&mut buf) {
                    moved = true;
                    if let Some(to) = client
                        && pass(&mut n)
                    {
                        let _ = front.send_to(&buf[..len], to);
                    }
                }
                if !moved {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Proxy {
            port,
            cut,
            drop_every,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A peer that reaches the server through `proxy`.
fn peer_through(server: &Server, proxy: &Proxy, name: &str, work: &Path) -> Mounted {
    let url = format!("quic://127.0.0.1:{}/v", proxy.port);
    peer_at(server, &url, name, "v", work)
}

/// A server, peer a reaching it through a proxy of the test's own (seen
/// connected: a file it wrote is on b), and peer b reaching it directly.
fn a_through_a_proxy_and_b(work: &Path) -> (Server, Proxy, Mounted, Mounted) {
    let server = Server::start();
    let proxy = Proxy::start(server.port);
    let a = peer_through(&server, &proxy, "a", work);
    let b = peer(&server, "b", "v", work);
    std::fs::write(a.path().join("before"), b"x").unwrap();
    eventually(
        "a connected through the proxy",
        Duration::from_secs(30),
        || b.path().join("before").exists(),
    );
    (server, proxy, a, b)
}

#[test]
fn a_network_cut_and_a_lossy_path_end_in_one_tree() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_server, proxy, a, b) = a_through_a_proxy_and_b(work.path());
    // Cut for longer than the idle timeout: the connection dies; both
    // peers work on.
    proxy.cut.store(true, Ordering::Relaxed);
    for i in 0..10 {
        std::fs::write(a.path().join(format!("a{i}")), content(i, 100_000)).unwrap();
        std::fs::write(b.path().join(format!("b{i}")), content(100 + i, 100_000)).unwrap();
    }
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        !b.path().join("a0").exists(),
        "a's change crossed a cut path"
    );
    proxy.cut.store(false, Ordering::Relaxed);
    let took = eventually("one tree after the cut", Duration::from_secs(60), || {
        let t = tree(a.path());
        t.len() == 21 && t == tree(b.path())
    });
    eprintln!("converged {took:?} after the path came back");
    // One datagram in five lost, both ways, while 4 MiB goes each way.
    proxy.drop_every.store(5, Ordering::Relaxed);
    let (x, y) = (content(500, 4 << 20), content(501, 4 << 20));
    std::fs::write(a.path().join("lossy-a"), &x).unwrap();
    std::fs::write(b.path().join("lossy-b"), &y).unwrap();
    let took = eventually(
        "one tree over a lossy path",
        Duration::from_secs(90),
        || {
            std::fs::read(b.path().join("lossy-a")).is_ok_and(|d| d == x)
                && std::fs::read(a.path().join("lossy-b")).is_ok_and(|d| d == y)
        },
    );
    eprintln!("8 MiB across with 20% loss in {took:?}");
    proxy.drop_every.store(0, Ordering::Relaxed);
    assert_eq!(tree(a.path()), tree(b.path()));
    a.unmount();
    b.unmount();
}

/// The last changes before an unmount reach the server before the daemon
/// exits: here the path is down when the unmount starts and comes back a
/// second later, within the time an unmount waits for the server.
#[test]
fn changes_made_just_before_an_unmount_reach_the_other_peer() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (_server, proxy, a, b) = a_through_a_proxy_and_b(work.path());
    proxy.cut.store(true, Ordering::Relaxed);
    let last = content(7, 300_000);
    std::fs::write(a.path().join("last"), &last).unwrap();
    let cut = &proxy.cut;
    let status = std::thread::scope(|s| {
        let down = s.spawn(|| a.unmount());
        std::thread::sleep(Duration::from_secs(1));
        cut.store(false, Ordering::Relaxed);
        down.join().expect("unmount")
    });
    assert!(status.success(), "a's daemon: {status}");
    eventually("a's last file on b", Duration::from_secs(30), || {
        std::fs::read(b.path().join("last")).is_ok_and(|d| d == last)
    });
    b.unmount();
}

/// A server that keeps a short log (`--keep-log 4`) cuts it as pushes
/// come: a peer that was away for longer gets the volume as of the cut in place of the change-
/// sets it missed, keeps what it changed meanwhile (a file both changed
/// gets a conflict copy, as with the log), and ends with the same tree;
/// the blocks of a file deleted before the cut are deleted on the server.
#[test]
fn a_peer_behind_a_cut_log_gets_the_snapshot_and_keeps_its_own_changes() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_with(&["--keep-log", "4"]);
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", work.path());
    std::fs::write(a.path().join("shared.txt"), b"base").unwrap();
    std::fs::write(a.path().join("doomed"), content(7, 200_000)).unwrap();
    eventually("the base on b", Duration::from_secs(20), || {
        std::fs::read(b.path().join("shared.txt")).is_ok_and(|d| d == b"base")
            && std::fs::read(b.path().join("doomed")).is_ok_and(|d| d.len() == 200_000)
    });
    // B goes away (unmounted while the server is down, so that what it
    // changes is not pushed) with changes of its own.
    let mut server = server;
    server.kill();
    std::fs::write(b.path().join("shared.txt"), b"edit from b").unwrap();
    std::fs::write(b.path().join("only-b"), b"made on b offline").unwrap();
    let b_store = b.store.clone();
    assert!(b.unmount().success());
    server.restart();
    // A changes the same file, deletes one, and goes on: many pushes.
    std::fs::write(a.path().join("shared.txt"), b"edit from a").unwrap();
    std::fs::remove_file(a.path().join("doomed")).unwrap();
    for i in 0..30 {
        std::fs::write(a.path().join(format!("n{i}")), format!("{i}")).unwrap();
        if i % 3 == 0 {
            std::fs::rename(
                a.path().join(format!("n{i}")),
                a.path().join(format!("m{i}")),
            )
            .unwrap();
        }
        common::fsync_root(a.path());
        std::thread::sleep(Duration::from_millis(30));
    }
    eventually("a cut of the log", Duration::from_secs(30), || {
        num(&server.status(), "cuts") >= 1
    });
    // B comes back behind the cut.
    let b = Mounted::start_logged(&b_store, &[], &work.path().join("b2.log"));
    let start = Instant::now();
    loop {
        let (ta, tb) = (tree(a.path()), tree(b.path()));
        if ta == tb && ta.contains_key("only-b") && ta.contains_key("m27") {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let log = |n: &str| std::fs::read_to_string(work.path().join(n)).unwrap_or_default();
            panic!(
                "not one tree within 30 s:\na: {:?}\nb: {:?}\nb's log:\n{}\nserver's log:\n{}",
                ta.keys().collect::<Vec<_>>(),
                tb.keys().collect::<Vec<_>>(),
                log("b2.log"),
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    eprintln!("b converged {took:?} after it came back");
    let st = server.status();
    assert!(num(&st, "snapshots_out") >= 1, "{st}");
    assert!(
        num(&st, "blocks_deleted") >= 1,
        "the deleted file's blocks: {st}"
    );
    let t = tree(a.path());
    let copies: Vec<&String> = t.keys().filter(|k| k.contains(".conflict-")).collect();
    assert_eq!(copies.len(), 1, "{:?}", t.keys().collect::<Vec<_>>());
    let mut both = vec![t["shared.txt"].clone(), t[copies[0]].clone()];
    both.sort();
    assert_eq!(both, vec![b"edit from a".to_vec(), b"edit from b".to_vec()]);
    assert!(!t.contains_key("doomed"));
    for i in 0..30 {
        let name = if i % 3 == 0 {
            format!("m{i}")
        } else {
            format!("n{i}")
        };
        assert_eq!(
            t.get(&name).map(Vec::as_slice),
            Some(format!("{i}").as_bytes()),
            "{name}"
        );
    }
    a.unmount();
    b.unmount();
    drop(server);
}

/// A peer killed with SIGKILL just after it applied a change-set has it in
/// its store; it saves its synced state at most once a second. It must
/// not take that change for its own when it comes back behind a cut log:
/// a file made there and deleted while the peer was away stayed deleted
/// with the log, and came back with the snapshot before the peer's
/// journal (`client/journal.rs`).
#[test]
fn a_peer_killed_just_after_applying_brings_nothing_back_from_behind_a_cut_log() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_with(&["--keep-log", "4"]);
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", work.path());
    // Two applies within a second: b saves its state at the first (its
    // first change in a while), not at the second.
    std::fs::write(a.path().join("first"), b"1").unwrap();
    eventually("first on b", Duration::from_secs(20), || {
        b.path().join("first").exists()
    });
    std::fs::write(a.path().join("doomed"), b"made on a, deleted later").unwrap();
    eventually("doomed on b", Duration::from_secs(20), || {
        b.path().join("doomed").exists()
    });
    let b_store = b.store.clone();
    let applied = || -> u64 {
        let at = b_store.as_path();
        let o = std::process::Command::new(common::bin())
            .args(["status".as_ref(), at.as_os_str(), "--json".as_ref()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        st["sync"]["applied"].as_u64().expect("sync.applied")
    };
    // b applied all of the log (daemon.json is written now and then).
    let head = server.status()["heads"]["v"]
        .as_u64()
        .expect("the volume's head");
    eventually("b's status at the head", Duration::from_secs(10), || {
        common::daemon_json(b.path())["sync"]["applied"].as_u64() == Some(head)
    });
    b.kill9();
    // What the store holds, not the state saved before the second apply;
    // and asking writes nothing to the store.
    let file = b_store.join(zippyfs::store::STORE_FILE);
    let before = std::fs::read(&file).unwrap();
    assert_eq!(applied(), head, "status of the killed peer's store");
    assert!(
        std::fs::read(&file).unwrap() == before,
        "status wrote to the store"
    );
    // The file goes, and the log is cut well past that.
    std::fs::remove_file(a.path().join("doomed")).unwrap();
    for i in 0..20 {
        std::fs::write(a.path().join(format!("n{i}")), format!("{i}")).unwrap();
        common::fsync_root(a.path());
        std::thread::sleep(Duration::from_millis(30));
    }
    eventually("a cut past the deletion", Duration::from_secs(30), || {
        num(&server.status(), "cuts") >= 2
    });
    let b = Mounted::start_logged(&b_store, &[], &work.path().join("b2.log"));
    let start = Instant::now();
    loop {
        let (ta, tb) = (tree(a.path()), tree(b.path()));
        if ta == tb && ta.contains_key("n19") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not one tree within 30 s:\na: {:?}\nb: {:?}",
            ta.keys().collect::<Vec<_>>(),
            tb.keys().collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eventually("b got the snapshot", Duration::from_secs(5), || {
        num(&server.status(), "snapshots_out") >= 1
    });
    // Quiet for a moment: nothing b pushed brings it back either.
    std::thread::sleep(Duration::from_secs(2));
    for m in [&a, &b] {
        let t = tree(m.path());
        assert!(
            !t.contains_key("doomed"),
            "the deleted file came back: {:?}",
            t.keys().collect::<Vec<_>>()
        );
        assert!(!t.keys().any(|k| k.contains(".conflict-")), "{t:?}");
    }
    a.unmount();
    b.unmount();
}

/// A change-set of another peer that makes directory `name` (id `fid`) in
/// the root.
fn mkdir_from_elsewhere(fid: u128, name: &str) -> zippyfs::sync::tree::ChangeSet {
    zippyfs::sync::tree::ChangeSet {
        origin: 2,
        origin_name: "elsewhere".into(),
        counter: fid as u64,
        base: 0,
        time: 0,
        ops: made_in_root(zippyfs::fs::Kind::Dir, fid, name, &[]),
    }
}

/// A peer sends its push's blocks as the server asks for them. A server
/// (here one of the test's own, on loopback) sends it the log meanwhile and
/// reads nothing until that is sent. The peer must keep reading while its
/// blocks wait: it once sent the blocks a Want asked for before it read
/// again, so each side waited for the other for ever.
#[test]
fn a_peer_sending_its_push_keeps_reading_a_server_that_does_not_read() {
    use zippyfs::sync::wire::{Msg, PROTO_MAX, Wanted};
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("a-store");
    // A 10 MiB file in the store before it syncs: the first push holds all
    // of it, 160 blocks, more than QUIC's stream window.
    let big = content(11, 10 << 20);
    {
        let a = Mounted::start_logged(&store, &[], &work.path().join("a-first.log"));
        std::fs::write(a.path().join("big"), &big).unwrap();
        assert!(a.unmount().success());
    }
    let sdir = work.path().join("server");
    std::fs::create_dir(&sdir).unwrap();
    let (cert, key) = zippyfs::sync::tls::server_identity(&sdir).unwrap();
    let fingerprint = zippyfs::sync::tls::fingerprint(&cert);
    let cfg = zippyfs::sync::tls::server_config(cert, key).unwrap();
    // More frames than the peer's reading task holds with `sync_window=1M`
    // (16 blocks and 64) and QUIC's stream window (1.25 MB) together.
    const LOG: u64 = 8000;
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let endpoint = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
            port_tx.send(endpoint.local_addr().unwrap().port()).unwrap();
            let conn = tokio::time::timeout(Duration::from_secs(30), endpoint.accept())
                .await
                .expect("the peer connects within 30 s")
                .unwrap()
                .await
                .unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            assert!(matches!(
                next_frame(&mut recv).await,
                Some(Msg::Hello { .. })
            ));
            let welcome = Msg::Welcome {
                proto: PROTO_MAX,
                server_id: [9; 16],
                peer: 1,
                peer_name: "a".into(),
                head: 0,
                taken: (0, 0),
            };
            send.write_all(&frame(&welcome)).await.unwrap();
            let Some(Msg::Push(cs)) = next_frame(&mut recv).await else {
                panic!("the peer's first message after Welcome is not its push");
            };
            let hashes: std::collections::HashSet<[u8; 32]> =
                zippyfs::sync::server::hashes_of(&cs).into_iter().collect();
            let wants: Vec<Wanted> = hashes.iter().map(|h| Wanted::whole(*h)).collect();
            send.write_all(&frame(&Msg::Want { wants })).await.unwrap();
            // The log, reading nothing.
            let flood = async {
                for seq in 1..=LOG {
                    let name = format!("{seq:0>250}");
                    let m = Msg::Deliver {
                        seq,
                        cs: mkdir_from_elsewhere(1_000_000 + seq as u128, &name),
                    };
                    send.write_all(&frame(&m)).await.unwrap();
                }
            };
            let flooded = tokio::time::timeout(Duration::from_secs(30), flood)
                .await
                .is_ok();
            let mut got = std::collections::HashSet::new();
            while flooded && got.len() < hashes.len() {
                match tokio::time::timeout(Duration::from_secs(20), next_frame(&mut recv)).await {
                    Ok(Some(Msg::Block { hash, data })) => {
                        assert_eq!(*blake3::hash(&data).as_bytes(), hash);
                        got.insert(hash);
                    }
                    other => panic!("expected the push's blocks, got {other:?}"),
                }
            }
            if flooded {
                let ack = Msg::Ack {
                    counter: cs.counter,
                    seq: LOG + 1,
                    time: 0,
                };
                send.write_all(&frame(&ack)).await.unwrap();
                // Until the peer goes.
                while next_frame(&mut recv).await.is_some() {}
            }
            conn.close(0u32.into(), b"done");
            (flooded, got.len(), hashes.len())
        })
    });
    let port = port_rx.recv().unwrap();
    let cred = work.path().join("credential");
    std::fs::write(&cred, "any credential: this server takes every peer\n").unwrap();
    let st = std::process::Command::new(common::bin())
        .arg("join")
        .arg(&store)
        .arg(format!("quic://127.0.0.1:{port}/v"))
        .args(["--fingerprint", &fingerprint])
        .arg("--credential")
        .arg(&cred)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "join failed");
    let a = Mounted::start_logged(
        &store,
        &["-o", "sync_window=1M"],
        &work.path().join("a.log"),
    );
    let log_len = |a: &Mounted| {
        std::fs::read_dir(a.path())
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    };
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("the peer applies the log", Duration::from_secs(60), || {
            log_len(&a) as u64 >= LOG
        })
    }));
    let status = a.unmount();
    let (flooded, got, wanted) = server.join().expect("the test's server");
    assert!(
        flooded,
        "the server's 8000 deliveries were not read within 30 s while the peer sent its blocks"
    );
    assert_eq!(got, wanted, "the push's blocks");
    assert!(applied.is_ok(), "the peer did not apply the log");
    assert!(status.success(), "a's daemon: {status}");
}

/// What a peer's status says about sync (`.zippy/daemon.json`, "sync").
fn why(m: &Mounted) -> String {
    common::daemon_json(m.path())["sync"]["why"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits (bounded) until the server's figure `k` stays still for a second
/// (its status is written twice a second).
fn quiet(server: &Server, k: &str) {
    eventually(
        &format!("the server's {k} still"),
        Duration::from_secs(30),
        || {
            let was = num(&server.status(), k);
            std::thread::sleep(Duration::from_secs(1));
            num(&server.status(), k) == was
        },
    );
}

/// A file more than the small disks below hold, then a small one after it.
fn more_than_fits(a: &Mounted) -> Vec<u8> {
    let big = content(77, 40 << 20);
    std::fs::write(a.path().join("big.bin"), &big).unwrap();
    std::fs::write(a.path().join("after.txt"), b"after").unwrap();
    big
}

/// Both files of [`more_than_fits`] on `m`, whole.
fn has_both(m: &Mounted, big: &[u8]) -> bool {
    std::fs::read(m.path().join("after.txt")).is_ok_and(|d| d == b"after")
        && std::fs::read(m.path().join("big.bin")).is_ok_and(|d| d == big)
}

/// The server's disk fills with a push: the peer is told why (not
/// "connection lost"), the push is not sent again and again while the
/// disk stays full, and it goes through by itself once there is room.
#[test]
fn a_full_disk_on_the_server_refuses_pushes_with_the_reason_until_there_is_room() {
    if !fuse_or_skip() {
        return;
    }
    let disk = common::SmallDisk::new("24m");
    let work = tempfile::tempdir().unwrap();
    let server = Server::start_in(disk.path());
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", work.path());
    written_and_seen(&a, &b, "before.txt", b"before");
    let big = more_than_fits(&a);
    eventually(
        "a says the server has no room",
        Duration::from_secs(30),
        || why(&a).contains("the server's store: no space left"),
    );
    // Refused before its blocks cross again: over 8 s of tries (one every
    // 2 s at most), a few KiB each, not 40 MiB each.
    quiet(&server, "bytes_in");
    let st = server.status();
    let (before, tries) = (num(&st, "bytes_in"), num(&st, "connections"));
    std::thread::sleep(Duration::from_secs(8));
    let during = num(&server.status(), "bytes_in").saturating_sub(before);
    assert!(during < 4 << 20, "{during} bytes taken while full");
    // It was tried meanwhile (and the server's figures are current).
    assert!(
        num(&server.status(), "connections") > tries,
        "no try while full"
    );
    assert!(!b.path().join("after.txt").exists());
    assert!(has_both(&a, &big), "a lost its own files");
    disk.grow("256m");
    eventually(
        "both files on b once there is room",
        Duration::from_secs(60),
        || has_both(&b, &big),
    );
    eventually("a connected again", Duration::from_secs(20), || {
        why(&a) == "connected"
    });
}

/// A peer's disk fills with a change from elsewhere: it says so, keeps
/// serving what it has, and takes the change by itself once there is room.
#[test]
fn a_full_disk_on_a_peer_says_so_and_takes_the_change_once_there_is_room() {
    if !fuse_or_skip() {
        return;
    }
    let disk = common::SmallDisk::new("24m");
    let work = tempfile::tempdir().unwrap();
    let server = Server::start();
    let a = peer(&server, "a", "v", work.path());
    let b = peer(&server, "b", "v", disk.path());
    written_and_seen(&a, &b, "before.txt", b"before");
    more_than_fits(&a);
    eventually("b says it has no room", Duration::from_secs(30), || {
        why(&b).to_lowercase().contains("no space left")
    });
    // It stays connected and keeps what it fetched: once what it asked
    // for is here, over 5 s of tries (one every 2 s) the server sends it
    // nothing again, not 40 MiB a try.
    quiet(&server, "bytes_out");
    let before = num(&server.status(), "bytes_out");
    std::thread::sleep(Duration::from_secs(5));
    let during = num(&server.status(), "bytes_out").saturating_sub(before);
    let log = std::fs::read_to_string(disk.path().join("b.log")).unwrap_or_default();
    assert!(
        during < 4 << 20,
        "{during} bytes sent again while b was full; b's log:\n{log}"
    );
    assert!(
        why(&b).to_lowercase().contains("no space left"),
        "{}",
        why(&b)
    );
    assert!(why(&b).starts_with("connected"), "{}", why(&b));
    // The change may show in the mount before it is committed (as a
    // write does before its fsync), but only as a itself had it (a
    // commit of a's may have taken the file before its data: empty).
    let after = std::fs::read(b.path().join("after.txt"));
    assert!(
        after
            .as_ref()
            .map_or(true, |d| d.is_empty() || d == b"after"),
        "{after:?}"
    );
    assert_eq!(
        std::fs::read(b.path().join("before.txt")).unwrap(),
        b"before"
    );
    // Deleted on b while it shows uncommitted: that is b's own change,
    // made after the one that waited, and it goes to a once there is room
    // (before, the file came back on b and stayed on a).
    eventually("big.bin shows on b", Duration::from_secs(10), || {
        b.path().join("big.bin").exists()
    });
    std::fs::remove_file(b.path().join("big.bin")).unwrap();
    disk.grow("256m");
    let gone = |m: &Mounted| !m.path().join("big.bin").exists();
    eventually(
        "after.txt on b, big.bin gone on both",
        Duration::from_secs(60),
        || {
            std::fs::read(b.path().join("after.txt")).is_ok_and(|d| d == b"after")
                && gone(&a)
                && gone(&b)
        },
    );
    eventually("b connected again", Duration::from_secs(20), || {
        why(&b) == "connected"
    });
    // The change that waited went in as itself, not as a change of b's own
    // against it (which would have made a conflict copy).
    eventually("one tree", Duration::from_secs(20), || {
        tree(a.path()) == tree(b.path())
    });
    let names: Vec<String> = tree(a.path()).into_keys().collect();
    assert!(names.iter().all(|n| !n.contains(".conflict-")), "{names:?}");
    // Its version says where it came from, and that it waited.
    let versions: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(b.path().join(".zippy/versions.json")).unwrap())
            .unwrap();
    assert!(
        versions.iter().any(|v| v["origin"] == 1
            && v["cause"].as_str().is_some_and(|c| {
                c.starts_with("sync: a ") && c.ends_with("(after waiting for room)")
            })),
        "{versions:?}"
    );
    drop((a, b));
    common::fsck_clean(&work.path().join("a-store"));
    common::fsck_clean(&disk.path().join("b-store"));
}

/// `status` counts this mount's commits not yet on the server: they
/// pile up while the server is down, and go to zero once it has them.
#[test]
fn the_status_counts_what_is_queued_until_the_server_has_it() {
    if !fuse_or_skip() {
        return;
    }
    let (_work, mut server, a, b) = two_peers();
    let sync = |m: &Mounted| common::daemon_json(m.path())["sync"].clone();
    // Connected, nothing to push: nothing left from before either.
    eventually(
        "a checked for what is queued",
        Duration::from_secs(20),
        || {
            let s = sync(&a);
            s["queued_unchecked"] == false && s["queued_versions"] == 0
        },
    );
    server.kill();
    for i in 0..3u64 {
        let p = a.path().join(format!("q{i}"));
        let f = std::fs::File::create(&p).unwrap();
        f.write_all_at(&content(i, 100_000), 0).unwrap();
        f.sync_all().unwrap();
    }
    eventually(
        "three versions queued on a",
        Duration::from_secs(10),
        || {
            let s = sync(&a);
            s["queued_versions"].as_u64() >= Some(3) && s["queued_bytes"].as_u64() >= Some(300_000)
        },
    );
    let out = std::process::Command::new(common::bin())
        .arg("status")
        .arg(a.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("queued:"), "{text}");
    assert!(text.contains("made here not yet on the server"), "{text}");
    server.restart();
    eventually(
        "nothing queued once the server has it",
        Duration::from_secs(30),
        || {
            let s = sync(&a);
            s["queued_versions"] == 0 && s["queued_bytes"] == 0
        },
    );
    eventually("the three files on b", Duration::from_secs(20), || {
        (0..3u64).all(|i| {
            std::fs::read(b.path().join(format!("q{i}"))).is_ok_and(|d| d == content(i, 100_000))
        })
    });
}
