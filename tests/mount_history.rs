//! Old versions on a real mount: write, overwrite, rename and delete files
//! across versions, then read every old version back through
//! `.zippy/versions/<id>/`, byte for byte. The history directory is hidden
//! from the root's listing and cannot be written, renamed or removed.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The newest version the mount shows, after making everything durable.
fn newest_version(root: &Path) -> u64 {
    common::fsync_root(root);
    common::version_ids(root)
        .into_iter()
        .max()
        .expect("at least one version")
}

fn write(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(data).expect("write");
}

/// Every regular file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

fn history(mode: &[&str]) {
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), mode);
    let root = m.path();
    let mut expected: Vec<(u64, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();

    std::fs::create_dir(root.join("d")).expect("mkdir");
    write(&root.join("d/a"), &big);
    write(&root.join("small"), b"small file");
    expected.push((newest_version(root), files(root)));

    let mut changed = big.clone();
    changed[100_000..100_005].copy_from_slice(b"HELLO");
    write(&root.join("d/a"), &changed);
    expected.push((newest_version(root), files(root)));

    std::fs::rename(root.join("d/a"), root.join("moved")).expect("rename");
    expected.push((newest_version(root), files(root)));

    std::fs::remove_file(root.join("moved")).expect("unlink");
    std::fs::remove_file(root.join("small")).expect("unlink");
    expected.push((newest_version(root), files(root)));

    for (v, want) in &expected {
        let view = root.join(format!(".zippy/versions/{v}"));
        assert_eq!(&files(&view), want, "version {v} read back through .zippy");
    }
    assert!(
        expected.windows(2).all(|w| w[0].0 < w[1].0),
        "each step made a version"
    );

    // Hidden, read-only, not removable.
    let listed: Vec<String> = std::fs::read_dir(root)
        .expect("list root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !listed.contains(&".zippy".to_string()),
        "root lists {listed:?}"
    );
    assert!(root.join(".zippy").is_dir());
    let (v1, _) = &expected[0];
    let old = root.join(format!(".zippy/versions/{v1}/d/a"));
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(&old)
        .expect_err("write into history");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let e = std::fs::create_dir(root.join(format!(".zippy/versions/{v1}/new")))
        .expect_err("mkdir in history");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert!(std::fs::remove_dir_all(root.join(".zippy")).is_err());
    let e =
        std::fs::rename(root.join(".zippy"), root.join("elsewhere")).expect_err("rename history");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert!(m.unmount().success());
}

fn versions_command(path: &Path, json: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("versions");
    if json {
        cmd.arg("--json");
    }
    cmd.arg(path).output().expect("run zippyfs versions")
}

#[test]
fn versions_command_lists_the_same_versions_from_a_mount_a_path_inside_it_and_the_store() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    std::fs::create_dir(m.path().join("sub")).expect("mkdir");
    write(&m.path().join("sub/f"), b"data");
    let newest = newest_version(m.path());
    let ids = |out: std::process::Output| -> Vec<u64> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        v.as_array()
            .expect("an array")
            .iter()
            .map(|x| x["id"].as_u64().expect("id"))
            .collect()
    };
    let from_mount = ids(versions_command(m.path(), true));
    assert_eq!(from_mount.last(), Some(&newest));
    assert_eq!(
        ids(versions_command(&m.path().join("sub"), true)),
        from_mount
    );
    let table = versions_command(m.path(), false);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&newest.to_string()));
    assert!(m.unmount().success());
    assert_eq!(
        ids(versions_command(store.path(), true)),
        from_mount,
        "the same list from the store"
    );
    let outside = versions_command(Path::new("/proc"), false);
    assert!(!outside.status.success());
    assert!(String::from_utf8_lossy(&outside.stderr).contains("neither a zippyfs store"));
}

#[test]
fn every_old_version_reads_back_byte_for_byte_through_zippy() {
    if !common::fuse_or_skip() {
        return;
    }
    for mode in common::modes() {
        history(mode);
    }
}

#[test]
fn log_and_diff_follow_the_operations_applied() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    let root = m.path();
    std::fs::create_dir(root.join("d")).expect("mkdir");
    write(&root.join("d/f"), b"one");
    write(&root.join("g"), b"gone soon");
    let v1 = newest_version(root);
    write(&root.join("d/f"), b"one and two");
    let v2 = newest_version(root);
    std::fs::rename(root.join("d/f"), root.join("d/h")).expect("rename");
    std::fs::remove_file(root.join("g")).expect("unlink");
    write(&root.join("new"), b"new");
    let v3 = newest_version(root);

    let log = common::run_json(&["log", "d/f"], root);
    let changes: Vec<(u64, String)> = log
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().expect("id"),
                e["change"].as_str().expect("change").to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes.iter().find(|c| c.0 == v2).map(|c| c.1.as_str()),
        Some("modified")
    );
    // The rename may land in a commit of its own (one that a close
    // triggers) before the fsync that made v3: deleted after v2, by v3.
    let (gone_at, last) = changes.last().expect("changes");
    assert_eq!(last, "deleted");
    assert!(
        *gone_at > v2 && *gone_at <= v3,
        "deleted at {gone_at}, not in ({v2}, {v3}]"
    );
    assert!(changes.iter().any(|c| c.1 == "created" && c.0 <= v1));

    let d = common::run_json(&["diff", &v1.to_string(), &v3.to_string()], root);
    let list = |k: &str| -> Vec<serde_json::Value> { d[k].as_array().expect(k).clone() };
    assert_eq!(list("added"), vec![serde_json::json!("new")]);
    assert_eq!(list("removed"), vec![serde_json::json!("g")]);
    assert_eq!(list("renamed"), vec![serde_json::json!(["d/f", "d/h"])]);
    let d12 = common::run_json(&["diff", &v1.to_string(), &v2.to_string(), "d"], root);
    assert_eq!(d12["modified"], serde_json::json!(["d/f"]));
    assert_eq!(d12["added"], serde_json::json!([]));
    assert!(m.unmount().success());
}

#[test]
fn restore_brings_back_a_file_and_a_directory_as_a_new_version() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    let root = m.path();
    std::fs::create_dir(root.join("d")).expect("mkdir");
    write(&root.join("d/a"), b"a, first");
    write(&root.join("d/b"), b"b");
    std::os::unix::fs::symlink("a", root.join("d/ln")).expect("symlink");
    let v1 = newest_version(root);
    let v1_tree = files(root);
    // Lose some of it.
    write(&root.join("d/a"), b"a, second");
    std::fs::remove_file(root.join("d/b")).expect("unlink");
    write(&root.join("d/c"), b"c, new");
    let before_restore = newest_version(root);
    let before_tree = files(root);

    let restore = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .arg("restore")
            .args(args)
            .current_dir(root)
            .output()
            .expect("run restore");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // One file, elsewhere, by id.
    restore(&["d/a", "--at", &v1.to_string(), "--to", "a-then"]);
    assert_eq!(
        std::fs::read(root.join("a-then")).expect("restored copy"),
        b"a, first"
    );
    assert_eq!(
        std::fs::read(root.join("d/a")).expect("untouched"),
        b"a, second"
    );
    // The whole directory, in place, by time.
    let t = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(root.join(".zippy/versions.json")).expect("versions.json"),
    )
    .expect("JSON")
    .as_array()
    .expect("array")
    .iter()
    .find(|v| v["id"].as_u64() == Some(v1))
    .and_then(|v| v["time"].as_str().map(str::to_string))
    .expect("v1's time");
    restore(&["d", "--at", &t]);
    let after = newest_version(root);
    assert!(after > before_restore, "the restore made a new version");
    let mut now = files(root);
    now.remove("a-then");
    assert_eq!(now, v1_tree, "d is as it was in version {v1}");
    assert_eq!(
        std::fs::read_link(root.join("d/ln")).expect("symlink back"),
        Path::new("a")
    );
    // Nothing was lost: the state the restore replaced is still there.
    let old = root.join(format!(".zippy/versions/{before_restore}"));
    assert_eq!(files(&old), before_tree);
    assert!(m.unmount().success());
}

#[test]
fn log_diff_and_restore_reach_an_unmounted_store_with_store() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    let root = m.path().to_path_buf();
    write(&root.join("f"), b"first");
    let v1 = newest_version(&root);
    write(&root.join("f"), b"second, longer");
    write(&root.join("g"), b"another");
    let v2 = newest_version(&root);
    let live_log = common::run_json(&["log", "f"], &root);
    let live_diff = common::run_json(&["diff", &v1.to_string(), &v2.to_string()], &root);
    assert!(m.unmount().success());

    // The same answers from the store alone, which stays unmounted.
    let s = store.path().to_str().expect("utf-8");
    let (a, b) = (v1.to_string(), v2.to_string());
    let cwd = Path::new("/");
    assert_eq!(common::run_json(&["log", "--store", s, "f"], cwd), live_log);
    assert_eq!(
        common::run_json(&["diff", "--store", s, a.as_str(), b.as_str()], cwd),
        live_diff
    );
    let out = std::process::Command::new(common::bin())
        .args(["restore", "--store", s, "f", "--at", a.as_str()])
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = common::Mounted::start(store.path(), &[]);
    assert_eq!(std::fs::read(m.path().join("f")).expect("f"), b"first");
    assert_eq!(std::fs::read(m.path().join("g")).expect("g"), b"another");
    // On a mounted store, --store says where the mount is.
    let out = std::process::Command::new(common::bin())
        .args(["log", "--store", s, "f"])
        .output()
        .expect("log");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is mounted at"));
    assert!(m.unmount().success());
}
