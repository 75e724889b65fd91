//! Three peers, each a real mount of its own store, and a real server:
//! random operations on all three at once, then quiet; the three trees
//! must be identical, conflict copies named as SEMANTICS.md says, and
//! nothing any peer wrote lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::sync::{Rng, Server, eventually, peer, tree};

use common::{Mounted, fuse_or_skip};

/// A file's bytes: a token line, then `len` bytes made from the token.
fn content(token: &str, len: usize) -> Vec<u8> {
    let mut v = format!("{token}\n").into_bytes();
    let mut x = token
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    while v.len() < len.max(v.len()) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// What one peer does to its own directory: the tokens its files hold
/// (by path), which only it changes.
struct Own {
    files: BTreeMap<String, String>,
    dirs: BTreeSet<String>,
}

const SHARED: [&str; 4] = ["shared/a.txt", "shared/b.txt", "shared/c", "shared/d.log"];

fn step(p: usize, root: &Path, own: &mut Own, rng: &mut Rng, n: &mut u64) {
    *n += 1;
    let token = format!("p{p}-{n}");
    let me = format!("own{p}");
    let pick = |rng: &mut Rng, own: &Own| {
        let v: Vec<String> = own.files.keys().cloned().collect();
        (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize].clone())
    };
    match rng.below(12) {
        0..=2 => {
            // A whole shared file, 0 bytes to 300 KiB (some 2 MiB).
            let name = SHARED[rng.below(SHARED.len() as u64) as usize];
            let len = if rng.below(10) == 0 {
                2 << 20
            } else {
                rng.below(300 << 10) as usize
            };
            std::fs::write(root.join(name), content(&token, len)).unwrap();
        }
        3 => {
            // A patch in the middle of a shared file.
            let name = SHARED[rng.below(SHARED.len() as u64) as usize];
            if let Ok(f) = std::fs::OpenOptions::new()
                .write(true)
                .open(root.join(name))
            {
                let _ = f.write_all_at(token.as_bytes(), rng.below(100_000));
            }
        }
        4 => {
            let name = SHARED[rng.below(SHARED.len() as u64) as usize];
            if let Ok(f) = std::fs::OpenOptions::new()
                .write(true)
                .open(root.join(name))
            {
                let _ = f.set_len(rng.below(50_000));
            }
        }
        5 | 6 => {
            let dir = own
                .dirs
                .iter()
                .nth(rng.below(own.dirs.len() as u64) as usize)
                .cloned();
            let path = format!("{}/f{n}", dir.unwrap_or_else(|| me.clone()));
            std::fs::write(
                root.join(&path),
                content(&token, rng.below(70_000) as usize),
            )
            .unwrap();
            own.files.insert(path, token);
        }
        7 => {
            if let Some(from) = pick(rng, own) {
                let to = format!("{me}/r{n}");
                std::fs::rename(root.join(&from), root.join(&to)).unwrap();
                let t = own.files.remove(&from).unwrap();
                own.files.insert(to, t);
            }
        }
        8 => {
            if let Some(path) = pick(rng, own) {
                std::fs::remove_file(root.join(&path)).unwrap();
                own.files.remove(&path);
            }
        }
        9 => {
            let d = format!("{me}/d{n}");
            std::fs::create_dir(root.join(&d)).unwrap();
            std::fs::set_permissions(root.join(&d), std::fs::Permissions::from_mode(0o750))
                .unwrap();
            own.dirs.insert(d);
        }
        10 => {
            let target = format!("t{}", rng.below(5));
            std::os::unix::fs::symlink(&target, root.join(format!("{me}/l{n}"))).unwrap();
            own.files
                .insert(format!("{me}/l{n}"), format!("->{target}"));
        }
        _ => {
            if let Some(path) = pick(rng, own).filter(|p| !own.files[p].starts_with("->")) {
                let link = format!("{me}/h{n}");
                std::fs::hard_link(root.join(&path), root.join(&link)).unwrap();
                let t = own.files[&path].clone();
                own.files.insert(link, t);
            }
        }
    }
}

/// Permission bits of every path (the tree compares contents).
fn modes(root: &Path) -> BTreeMap<String, u32> {
    tree(root)
        .keys()
        .map(|k| {
            let m = std::fs::symlink_metadata(root.join(k))
                .unwrap()
                .permissions()
                .mode();
            (k.clone(), m)
        })
        .collect()
}

#[test]
fn three_peers_changing_one_volume_at_once_converge_and_lose_nothing() {
    if !fuse_or_skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut server = Server::start();
    let peers: Vec<Mounted> = (0..3)
        .map(|i| peer(&server, &format!("p{i}"), "v", work.path()))
        .collect();
    std::fs::create_dir(peers[0].path().join("shared")).unwrap();
    // One large file, 64 MiB, written on one peer while the others work.
    std::fs::write(peers[0].path().join("big.bin"), content("big", 64 << 20)).unwrap();
    eventually("shared/ everywhere", Duration::from_secs(30), || {
        peers.iter().all(|p| p.path().join("shared").is_dir())
    });
    let mut owns: Vec<Own> = (0..3)
        .map(|p| {
            std::fs::create_dir(peers[p].path().join(format!("own{p}"))).unwrap();
            Own {
                files: BTreeMap::new(),
                dirs: BTreeSet::new(),
            }
        })
        .collect();
    // ZIPPYFS_SYNC_SEED=N replays another history (each peer's operations
    // are seeded; their interleaving is the machine's).
    let seed: u64 = std::env::var("ZIPPYFS_SYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    eprintln!("seed {seed}");
    let mut rngs: Vec<Rng> = (0..3)
        .map(|p| Rng(seed.wrapping_mul(3) + p as u64))
        .collect();
    let mut n = 0;
    // All three at once: one thread per peer, 60 operations each.
    std::thread::scope(|s| {
        for ((p, own), rng) in owns.iter_mut().enumerate().zip(rngs.iter_mut()) {
            let root = peers[p].path().to_path_buf();
            let mut n = p as u64 * 1_000_000;
            s.spawn(move || {
                for _ in 0..60 {
                    step(p, &root, own, rng, &mut n);
                    if rng.below(4) == 0 {
                        std::thread::sleep(Duration::from_millis(rng.below(30)));
                    }
                }
            });
        }
    });
    // Last, every peer writes every shared file while the server is away:
    // all concurrent by construction, so each must survive, under the
    // name or as a conflict copy.
    server.kill();
    let mut last = BTreeSet::new();
    for (p, m) in peers.iter().enumerate() {
        for name in SHARED {
            n += 1;
            let token = format!("last-p{p}-{n}");
            let mut f = std::fs::File::create(m.path().join(name)).unwrap();
            f.write_all(&content(&token, 5000)).unwrap();
            last.insert(token);
        }
        common::fsync_root(m.path());
    }
    server.restart();
    let started = std::time::Instant::now();
    loop {
        let t0 = tree(peers[0].path());
        if peers[1..].iter().all(|p| tree(p.path()) == t0)
            && t0.keys().filter(|k| k.contains(".conflict-")).count() >= 2 * SHARED.len()
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            for (i, p) in peers.iter().enumerate() {
                let t = tree(p.path());
                let only: Vec<&String> = t.keys().filter(|k| !t0.contains_key(*k)).collect();
                let missing: Vec<&String> = t0.keys().filter(|k| !t.contains_key(*k)).collect();
                let differ: Vec<&String> = t
                    .keys()
                    .filter(|k| t0.get(*k).is_some_and(|v| v != &t[*k]))
                    .collect();
                eprintln!(
                    "p{i}: sync {}\n  only here {only:?}\n  missing {missing:?}\n  differ {differ:?}",
                    common::daemon_json(p.path())["sync"]
                );
            }
            panic!("the trees never became identical");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("quiet {:?} after the server came back", started.elapsed());
    // Stable: still identical a moment later, modes too.
    std::thread::sleep(Duration::from_millis(500));
    let t = tree(peers[0].path());
    for p in &peers[1..] {
        assert!(tree(p.path()) == t, "trees differ after quiet");
        assert_eq!(modes(p.path()), modes(peers[0].path()), "modes differ");
    }
    // Conflict copies are named <stem>.conflict-<peer>-<YYYYMMDD-HHMMSS><.ext>.
    for k in t.keys().filter(|k| k.contains(".conflict-")) {
        let file = k.rsplit('/').next().unwrap();
        let (stem, rest) = file.split_once(".conflict-").unwrap();
        let (peer_name, rest) = rest.split_once('-').unwrap();
        assert!(["a", "b", "c", "d"].contains(&stem), "{k}");
        assert!(["p0", "p1", "p2"].contains(&peer_name), "{k}");
        let stamp: String = rest.chars().take(15).collect();
        assert!(
            stamp.len() == 15 && stamp.as_bytes()[8] == b'-',
            "{k}: time is not YYYYMMDD-HHMMSS"
        );
    }
    // Nothing lost: every last write of a shared file is somewhere...
    let tokens: BTreeSet<String> = t
        .values()
        .filter_map(|v| v.split(|&b| b == b'\n').next())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    for tok in &last {
        assert!(tokens.contains(tok), "the write {tok} is lost");
    }
    // ...and every peer's own files are where it left them, with its bytes.
    for own in &owns {
        for (path, tok) in &own.files {
            let got = &t.get(path).unwrap_or_else(|| panic!("{path} is missing"));
            match tok.strip_prefix("->") {
                Some(target) => assert_eq!(got.as_slice(), target.as_bytes()),
                None => assert!(got.starts_with(format!("{tok}\n").as_bytes()), "{path}"),
            }
        }
    }
    assert_eq!(
        t.get("big.bin").map(|b| b.len()),
        Some(64 << 20),
        "the 64 MiB file"
    );
    assert!(t["big.bin"] == content("big", 64 << 20));
    for m in peers {
        m.unmount();
    }
}
