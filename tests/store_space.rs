//! Space comes back: rewriting 1 GiB over a 64 MiB live set, keeping the
//! last 10 versions, must leave the store file under 3× the live data, at
//! every commit along the way. Run with `--nocapture` to see the figures.
//! A commit that finds the device full fails and leaves the store usable.

use std::path::Path;

use zippyfs::store::{Retention, SplitMix64, Store, StoreOptions};

const LIVE: u64 = 64 << 20;
const REWRITE: u64 = 1 << 30;
const PER_COMMIT: u64 = 4 << 20;

fn opts() -> StoreOptions {
    StoreOptions {
        map_size: 1 << 36,
        retention: Retention::last(10),
        ..StoreOptions::default()
    }
}

fn file_len(store: &Store) -> u64 {
    std::fs::metadata(store.path().unwrap()).unwrap().len()
}

/// Writes `LIVE` bytes as `size`-byte items, then rewrites random items
/// until `REWRITE` bytes went in; returns (peak, final) file sizes.
fn rewrite(
    dir: &Path,
    size: u64,
    put: impl Fn(&mut zippyfs::store::WriteTxn<'_>, &[u8], &[u8]),
) -> (u64, u64) {
    let store = Store::open(dir, opts()).unwrap();
    let keys = LIVE / size;
    let mut rng = SplitMix64(3);
    let value = |n: u64| -> Vec<u8> { (0..size).map(|i| (i ^ n) as u8).collect() };
    let mut t = store.begin_write().unwrap();
    for k in 0..keys {
        put(&mut t, &k.to_be_bytes(), &value(k));
    }
    t.commit("fill").unwrap();
    let mut peak = file_len(&store);
    let mut written = 0;
    let mut n = 0;
    while written < REWRITE {
        let mut t = store.begin_write().unwrap();
        for _ in 0..PER_COMMIT / size {
            n += 1;
            put(&mut t, &rng.below(keys).to_be_bytes(), &value(n));
        }
        t.commit("rewrite").unwrap();
        written += PER_COMMIT;
        peak = peak.max(file_len(&store));
    }
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "{report}");
    let stats = store.stats();
    let last = file_len(&store);
    println!(
        "{size}-byte items: live {} MiB, rewrote {} MiB; file peak {:.1} MiB ({:.2}x live), final {:.1} MiB ({:.2}x); {stats:?}",
        LIVE >> 20,
        REWRITE >> 20,
        peak as f64 / (1 << 20) as f64,
        peak as f64 / LIVE as f64,
        last as f64 / (1 << 20) as f64,
        last as f64 / LIVE as f64,
    );
    (peak, last)
}

#[test]
fn rewriting_1gib_of_values_keeps_the_file_under_3x_live() {
    let dir = tempfile::tempdir().unwrap();
    // 4000-byte values: each fills one overflow page.
    let (peak, _) = rewrite(dir.path(), 4000, |t, k, v| t.put(k, v).unwrap());
    assert!(peak < 3 * LIVE, "file peaked at {peak} bytes");
}

#[test]
fn rewriting_1gib_of_extents_keeps_the_file_under_3x_live() {
    let dir = tempfile::tempdir().unwrap();
    // 4 KiB data blocks in extents, referenced by small values: what the
    // filesystem's block map does.
    let (peak, _) = rewrite(dir.path(), 4096, |t, k, v| {
        let e = t.write_extent(v).unwrap();
        t.put_with_extent(k, &v[..16], e).unwrap();
    });
    assert!(peak < 3 * LIVE, "file peaked at {peak} bytes");
}

#[test]
fn space_cap_lets_the_oldest_versions_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let cap: u64 = 16 << 20;
    let opts = StoreOptions {
        map_size: 1 << 32,
        retention: Retention {
            max_bytes: cap,
            ..Retention::all()
        },
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), opts).unwrap();
    // 40 commits, each rewriting the same 1 MiB: keeping all of them would
    // take 40 MiB.
    for round in 0..40u64 {
        let mut t = store.begin_write().unwrap();
        for k in 0..256u64 {
            let e = t.write_extent(&vec![round as u8; 4096]).unwrap();
            t.put_with_extent(&k.to_be_bytes(), b"v", e).unwrap();
        }
        t.commit("round").unwrap();
    }
    let versions: Vec<u64> = store.versions().iter().map(|v| v.id).collect();
    let st = store.stats();
    let used = (st.hwm_pages - st.free_pages) * 4096;
    println!(
        "cap {cap} bytes: {} versions kept, {used} bytes used",
        versions.len()
    );
    assert!(versions.len() < 40, "the cap dropped nothing");
    assert!(
        versions.len() > 1,
        "the cap left only the newest, with room for more"
    );
    assert!(
        used <= cap + (2 << 20),
        "{used} bytes used over a cap of {cap}"
    );
    // What is left is the newest versions, without gaps.
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "{versions:?}"
    );
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_commit_that_finds_the_device_full_fails_and_the_store_goes_on() {
    use std::sync::Arc;
    use zippyfs::store::{SimBackend, StoreError};
    const DEVICE: u64 = 2 << 20;
    let dev = Arc::new(SimBackend::new(DEVICE).unwrap());
    let store = Store::open_backend(
        Box::new(dev),
        StoreOptions {
            map_size: DEVICE,
            retention: Retention::last(10),
            reserve: 256 << 10,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let mut t = store.begin_write().unwrap();
    t.put(b"kept", b"before").unwrap();
    t.commit("small").unwrap();
    // Far more tree than the device holds: the nodes get their pages at
    // commit, and run out there.
    let mut t = store.begin_write().unwrap();
    for k in 0u64..60_000 {
        t.put(&k.to_be_bytes(), &[7u8; 40]).unwrap();
    }
    match t.commit("too big") {
        Err(StoreError::NoSpace | StoreError::MapFull { .. }) => {}
        other => panic!("expected the device to be full, got {other:?}"),
    }
    // The store is not poisoned: the last commit is intact and the next
    // one goes through.
    let snap = store.latest().unwrap();
    assert_eq!(snap.get(b"kept").unwrap(), Some(&b"before"[..]));
    drop(snap);
    let mut t = store.begin_write().unwrap();
    t.put(b"after", b"ok").unwrap();
    t.commit("after the full disk").unwrap();
    assert_eq!(
        store.latest().unwrap().get(b"after").unwrap(),
        Some(&b"ok"[..])
    );
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn on_a_full_device_only_commits_that_use_the_reserve_get_through_and_letting_versions_go_makes_room()
 {
    use std::sync::Arc;
    use zippyfs::store::SimBackend;
    const DEVICE: u64 = 16 << 20;
    const RESERVE: u64 = 2 << 20;
    let dev = Arc::new(SimBackend::new(DEVICE).unwrap());
    let store = Store::open_backend(
        Box::new(dev),
        StoreOptions {
            map_size: DEVICE,
            retention: Retention::all(),
            reserve: RESERVE,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // Versions of ever new data until an ordinary commit finds no room.
    let block = vec![5u8; 256 << 10];
    let mut full = false;
    for round in 0..200u64 {
        let mut t = store.begin_write().unwrap();
        let e = match t.write_extent(&block) {
            Ok(e) => e,
            Err(e) if e.is_no_space() => {
                full = true;
                break;
            }
            Err(e) => panic!("round {round}: {e}"),
        };
        t.put_with_extent(&round.to_be_bytes(), b"data", e).unwrap();
        match t.commit("fill") {
            Ok(_) => {}
            Err(e) if e.is_no_space() => {
                full = true;
                break;
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    assert!(full, "the device never filled");
    let st = store.stats();
    assert!(
        st.file_bytes >= (st.hwm_pages << 12) + RESERVE,
        "the reserve was used by ordinary commits: {st:?}"
    );
    let before = store.versions().len();
    // Deleting everything, letting the old versions go and changing the
    // policy: one commit from the reserve.
    let mut t = store.begin_write().unwrap();
    t.use_reserve();
    for round in 0..200u64 {
        t.delete(&round.to_be_bytes()).unwrap();
    }
    t.let_oldest_go(before);
    t.set_retention(Retention::last(3));
    t.commit("make room").expect("a commit from the reserve");
    assert!(store.versions().len() <= 3, "{:?}", store.versions());
    assert_eq!(store.retention(), Retention::last(3));
    // Room again for ordinary commits, without anything outside the store.
    for round in 0..8u64 {
        let mut t = store.begin_write().unwrap();
        let e = t.write_extent(&block).unwrap();
        t.put_with_extent(&round.to_be_bytes(), b"again", e)
            .unwrap();
        t.commit("after")
            .unwrap_or_else(|e| panic!("round {round} after making room: {e}"));
    }
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_policy_set_by_a_commit_is_kept_in_the_store_and_wins_over_the_one_given_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = |r: Retention| StoreOptions {
        map_size: 1 << 30,
        retention: r,
        ..StoreOptions::default()
    };
    {
        let store = Store::open(dir.path(), opts(Retention::last(50))).unwrap();
        assert!(!store.has_stored_policy());
        let mut t = store.begin_write().unwrap();
        t.set_retention(Retention::last(2));
        t.commit("policy").unwrap();
        for i in 0..5u64 {
            let mut t = store.begin_write().unwrap();
            t.put(b"k", &i.to_be_bytes()).unwrap();
            t.commit("v").unwrap();
        }
        assert_eq!(store.versions().len(), 2);
    }
    let store = Store::open(dir.path(), opts(Retention::last(50))).unwrap();
    assert!(store.has_stored_policy());
    assert_eq!(store.retention(), Retention::last(2));
}

/// A reader asking for the newest version while commits come, each letting
/// the one before go (`keep-last 1`), always gets one: it is found and
/// pinned at once, never let go in between.
#[test]
fn the_newest_version_is_always_there_to_read_while_commits_let_the_last_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            map_size: 1 << 30,
            retention: Retention::last(1),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..3_000u32 {
                let mut t = store.begin_write().unwrap();
                t.put(b"k", &i.to_le_bytes()).unwrap();
                t.commit("test").unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut reads = 0u64;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let snap = store.latest().expect("the newest version, pinned");
            assert!(snap.get(b"k").is_ok());
            reads += 1;
        }
        assert!(reads > 100, "only {reads} reads overlapped the commits");
    });
}
