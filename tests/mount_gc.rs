//! Retention and gc on a live mount, under a write load: gc loses no kept
//! version and no current data (checksums of every kept version's files
//! before and after), and the space old versions held becomes free; fsck
//! of the live mount is clean.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// BLAKE3 of every regular file under `dir`, by relative path.
fn sums(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_file() {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            out.insert(
                name,
                blake3::hash(&std::fs::read(&p).expect("read"))
                    .to_hex()
                    .to_string(),
            );
        }
    }
    out
}

fn content(i: u64) -> Vec<u8> {
    (0..20_000 + i % 5000)
        .map(|j| (j ^ (i * 7)) as u8)
        .collect()
}

fn run(cmd: &[&str]) {
    let out = Command::new(common::bin())
        .args(cmd)
        .output()
        .expect("run zippyfs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gc_under_a_write_load_keeps_every_kept_version_and_all_current_data() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    let root = m.path().to_path_buf();
    // Ten versions of three files.
    for round in 0..10u64 {
        for f in 0..3u64 {
            std::fs::write(root.join(format!("r{f}")), content(round * 10 + f)).expect("write");
        }
        common::fsync_root(&root);
    }
    let before: BTreeMap<u64, BTreeMap<String, String>> = common::version_ids(&root)
        .into_iter()
        .map(|v| (v, sums(&root.join(format!(".zippy/versions/{v}")))))
        .collect();
    let held_before = common::daemon_json(&root)["retained_pages"]
        .as_u64()
        .expect("retained_pages");
    assert!(held_before > 0, "old versions hold pages before gc");

    // The load: new files, fsync'd, all through the gc.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (root, stop) = (root.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 1000u64;
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(root.join(format!("w{i}")), content(i)).expect("load write");
                if i.is_multiple_of(4) {
                    common::fsync_root(&root);
                }
                i += 1;
            }
            i
        })
    };
    let st = store.path().to_str().expect("utf-8 path");
    run(&[
        "retention",
        st,
        "--keep-last",
        "4",
        "--hourly",
        "0",
        "--daily",
        "0",
    ]);
    run(&["gc", root.to_str().expect("utf-8 path")]);
    stop.store(true, Ordering::Relaxed);
    let last = writer.join().expect("writer");
    common::fsync_root(&root);

    let after = common::version_ids(&root);
    assert!(after.len() <= 4, "kept after gc: {after:?}");
    for v in &after {
        if let Some(want) = before.get(v) {
            assert_eq!(
                &sums(&root.join(format!(".zippy/versions/{v}"))),
                want,
                "version {v} changed"
            );
        }
    }
    for i in 1000..last {
        assert_eq!(
            std::fs::read(root.join(format!("w{i}"))).expect("load file"),
            content(i),
            "w{i}"
        );
    }
    for f in 0..3u64 {
        assert_eq!(
            std::fs::read(root.join(format!("r{f}"))).expect("round file"),
            content(90 + f)
        );
    }
    let d = common::daemon_json(&root);
    assert!(
        d["retained_pages"].as_u64().expect("retained") < held_before,
        "old versions hold {} pages after gc, {held_before} before",
        d["retained_pages"]
    );
    assert!(m.unmount().success());
    common::fsck_clean(store.path());
}
