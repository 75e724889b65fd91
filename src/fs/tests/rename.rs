//! Renames running at once with each other and with commits.

use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

/// Directories moving between parents check the new parent's ancestry,
/// which may lie in any shard. Taking those shards one by one while
/// holding others deadlocked against the flusher, which takes all of them
/// in order (seen in CI: a mount hung in rename and in the commit for 84
/// minutes); and two such renames at once must not put a directory below
/// itself.
#[test]
fn directory_moves_between_parents_neither_deadlock_with_commits_nor_make_a_loop() {
    const MOVERS: usize = 2;
    const MOVES: usize = 3_000;
    let (_d, fs) = fresh();
    let fs = Arc::new(fs);
    // A fixed tree to move within: three chains four deep.
    let mut fixed = vec![ROOT];
    for top in [&b"a"[..], b"b", b"c"] {
        let mut p = fs.mkdir(ROOT_CTX, ROOT, top, 0o755).unwrap().ino;
        fixed.push(p);
        for depth in 0..3u8 {
            p = fs.mkdir(ROOT_CTX, p, &[b'0' + depth], 0o755).unwrap().ino;
            fixed.push(p);
        }
    }
    // Each mover owns three directories (so it knows where they are) and
    // moves them anywhere, into the others' too.
    let owned: Vec<Vec<(Vec<u8>, u64)>> = (0..MOVERS)
        .map(|m| {
            (0..3)
                .map(|k| {
                    let name = format!("m{m}-{k}").into_bytes();
                    let ino = fs.mkdir(ROOT_CTX, ROOT, &name, 0o755).unwrap().ino;
                    (name, ino)
                })
                .collect()
        })
        .collect();
    let mut targets = fixed.clone();
    targets.extend(owned.iter().flatten().map(|(_, ino)| *ino));
    let total_dirs = targets.len();

    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut threads = Vec::new();
    for (m, mine) in owned.into_iter().enumerate() {
        let (fs, targets, done) = (Arc::clone(&fs), targets.clone(), done_tx.clone());
        threads.push(std::thread::spawn(move || {
            let mut parent_of: Vec<u64> = vec![ROOT; mine.len()];
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ m as u64;
            for i in 0..MOVES {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = i % mine.len();
                let to = targets[(x % targets.len() as u64) as usize];
                let (name, _) = &mine[k];
                match fs.rename(parent_of[k], name, to, name, RenameMode::Replace) {
                    Ok(()) => parent_of[k] = to,
                    // Into itself or below itself; or onto itself.
                    Err(e) if e.errno() == libc::EINVAL => {}
                    Err(e) => panic!("rename of mover {m}'s {k}: {e}"),
                }
            }
            let _ = done.send(());
        }));
    }
    let committer = {
        let (fs, stop) = (Arc::clone(&fs), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                fs.commit("test").unwrap();
                n += 1;
            }
        })
    };
    for _ in 0..MOVERS {
        done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the renames did not finish in 60 s: a deadlock");
    }
    stop.store(true, Ordering::Relaxed);
    committer.join().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    // Every directory is still reachable from the root: none went below
    // itself.
    let mut seen = 0;
    let mut stack = vec![ROOT];
    while let Some(dir) = stack.pop() {
        seen += 1;
        assert!(seen <= total_dirs, "more directories than made: a loop");
        let fh = fs.opendir(dir).unwrap();
        let list = fs.readdir(fh, dir, 0).unwrap();
        fs.releasedir(fh);
        stack.extend(
            list.iter()
                .filter(|e| e.kind == Kind::Dir && e.name != b"." && e.name != b"..")
                .filter(|e| !is_history(e.ino))
                .map(|e| e.ino),
        );
    }
    assert_eq!(seen, total_dirs, "directories lost from the tree");
}
