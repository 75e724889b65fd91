//! Corruption: random bytes of random pages of a store file are flipped.
//! Whatever was hit (node, overflow value, data extent, allocator state),
//! the store either reads back exactly what was written or fails with an
//! error naming the damaged page, and `fsck` finds the same damage. Nothing
//! panics.

use std::collections::BTreeMap;
use std::path::Path;

use zippyfs::store::{Retention, STORE_FILE, SplitMix64, Store, StoreError, StoreOptions};

type Versions = BTreeMap<u64, BTreeMap<Vec<u8>, (Vec<u8>, Option<Vec<u8>>)>>;

fn opts() -> StoreOptions {
    StoreOptions {
        map_size: 1 << 30,
        retention: Retention::last(8),
        ..StoreOptions::default()
    }
}

fn build(dir: &Path) {
    let store = Store::open(dir, opts()).unwrap();
    let mut rng = SplitMix64(42);
    for round in 0..12u64 {
        let mut t = store.begin_write().unwrap();
        for _ in 0..300 {
            let k = format!("key{:05}", rng.below(3000)).into_bytes();
            if rng.below(4) == 0 {
                t.delete(&k).unwrap();
            } else if rng.below(5) == 0 {
                let data: Vec<u8> = (0..1 + rng.below(8000))
                    .map(|i| (i * 7) as u8 ^ round as u8)
                    .collect();
                let e = t.write_extent(&data).unwrap();
                t.put_with_extent(&k, b"ext", e).unwrap();
            } else {
                let len = if rng.below(20) == 0 {
                    2000 + rng.below(8000)
                } else {
                    rng.below(100)
                };
                let v: Vec<u8> = (0..len).map(|i| (i as u8) ^ round as u8).collect();
                t.put(&k, &v).unwrap();
            }
        }
        t.commit("build").unwrap();
    }
    store.close().unwrap();
}

/// Every kept version, or the first error met while reading them.
fn read_all(store: &Store) -> Result<Versions, StoreError> {
    let mut out = Versions::new();
    for v in store.versions() {
        let snap = store.snapshot(v.id)?;
        let mut m = BTreeMap::new();
        for item in snap.range::<std::ops::RangeFull>(..)? {
            let (k, e) = item?;
            let ext = match e.extent {
                Some(x) => Some(snap.read_extent(&x)?.to_vec()),
                None => None,
            };
            m.insert(k.to_vec(), (e.value.to_vec(), ext));
        }
        out.insert(v.id, m);
    }
    Ok(out)
}

/// The page an error names, if it names one.
fn named_page(e: &StoreError) -> Option<u64> {
    match e {
        StoreError::Corrupt { page, .. } => Some(*page),
        _ => None,
    }
}

/// The page an error names, which must be the flipped one (or the first
/// page of the run holding it).
fn page_named(e: &StoreError, flipped: u64, trial: u32) -> u64 {
    let named = named_page(e).unwrap_or_else(|| panic!("trial {trial}: unclear error {e}"));
    assert!(
        names(named, flipped),
        "trial {trial}: flipped page {flipped}, error names {named}: {e}"
    );
    named
}

/// Overflow runs are checked whole and named by their first page.
fn names(named: u64, flipped: u64) -> bool {
    named <= flipped && flipped - named < 3
}

#[test]
fn flipped_bytes_give_an_error_naming_the_page_or_no_change_at_all() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    let pristine_file = std::fs::read(base.path().join(STORE_FILE)).unwrap();
    let (pristine, pages) = {
        let s = Store::open(base.path(), opts()).unwrap();
        // Pages in use or free below the high-water mark; past it lies the
        // store's reserve, never written.
        (read_all(&s).unwrap(), s.stats().hwm_pages)
    };
    let mut rng = SplitMix64(9);
    let (mut on_open, mut on_read, mut harmless) = (0, 0, 0);
    for trial in 0..400 {
        let page = 2 + rng.below(pages - 2);
        let mut image = pristine_file.clone();
        for _ in 0..1 + rng.below(3) {
            let at = (page * 4096 + rng.below(4096)) as usize;
            image[at] ^= 1 + rng.below(255) as u8;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STORE_FILE), &image).unwrap();
        let store = match Store::open(dir.path(), opts()) {
            Ok(s) => s,
            Err(e) => {
                let named = page_named(&e, page, trial);
                assert!(e.to_string().contains(&format!("page {named}")), "{e}");
                on_open += 1;
                continue;
            }
        };
        let report = store.fsck().unwrap();
        match read_all(&store) {
            Ok(got) => {
                assert!(
                    got == pristine,
                    "trial {trial}: page {page} changed data without an error"
                );
                assert!(
                    report.is_clean(),
                    "trial {trial}: reads clean but fsck says {report}"
                );
                harmless += 1;
            }
            Err(e) => {
                let named = page_named(&e, page, trial);
                assert!(
                    report.problems.iter().any(|p| p.page == Some(named)),
                    "trial {trial}: read error at page {named} but fsck says {report}"
                );
                on_read += 1;
            }
        }
    }
    println!(
        "400 trials: {on_open} detected at open, {on_read} on read, {harmless} hit free or unused bytes"
    );
    // Most pages of this store hold live data; the flips must be noticed.
    assert!(
        on_open + on_read > 200,
        "only {} of 400 detected",
        on_open + on_read
    );
}

#[test]
fn garbage_file_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STORE_FILE), vec![0x5au8; 3 * 4096]).unwrap();
    match Store::open(dir.path(), opts()) {
        Err(StoreError::NotAStore(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened garbage"),
    }
    std::fs::write(dir.path().join(STORE_FILE), b"short").unwrap();
    assert!(matches!(
        Store::open(dir.path(), opts()),
        Err(StoreError::NotAStore(_))
    ));
}

#[test]
fn second_opener_gets_store_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), opts()).unwrap();
    match Store::open(dir.path(), opts()) {
        Err(e @ StoreError::InUse { .. }) => assert!(e.to_string().contains("in use")),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("second open succeeded"),
    }
}

#[test]
fn an_empty_store_file_is_refused_not_taken_for_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(STORE_FILE);
    std::fs::write(&file, b"").unwrap();
    match Store::open(dir.path(), opts()) {
        Err(e @ StoreError::NotAStore(_)) => {
            assert!(e.to_string().contains("empty"), "{e}")
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an empty store file was taken for a new store"),
    }
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "left as found");
}

#[test]
fn a_new_store_appears_whole_and_leaves_nothing_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), opts()).unwrap().close().unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [STORE_FILE]);
    // A leftover of a crash while an earlier attempt made the store is
    // started over, not trusted.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join(format!("{STORE_FILE}.new")), b"junk").unwrap();
    let s = Store::open(other.path(), opts()).unwrap();
    assert_eq!(s.versions().len(), 0);
}

/// Rewrites commit slot `i` (0 or 1) of a store file with `edit` applied to
/// its 128 bytes, and a checksum that holds (see `format.rs`).
fn rewrite_slot(file: &Path, i: usize, edit: impl Fn(&mut [u8])) {
    let mut image = std::fs::read(file).unwrap();
    let slot = &mut image[i * 4096..i * 4096 + 128];
    edit(slot);
    let sum = xxhash_rust::xxh3::xxh3_64(&slot[..120]);
    slot[120..128].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(file, image).unwrap();
}

fn slot_txn(file: &Path, i: usize) -> u64 {
    let image = std::fs::read(file).unwrap();
    u64::from_le_bytes(image[i * 4096 + 16..i * 4096 + 24].try_into().unwrap())
}

#[test]
fn a_slot_whose_checksum_holds_but_whose_fields_cannot_be_is_refused() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    let pristine = std::fs::read(base.path().join(STORE_FILE)).unwrap();
    let put =
        |at: usize, v: u64| move |s: &mut [u8]| s[at..at + 8].copy_from_slice(&v.to_le_bytes());
    // Both slots damaged the same way: nothing to fall back on, and the
    // error names what is wrong (before this check, a huge high-water mark
    // sized the allocator's bitmaps and a huge root page wrapped).
    let cases: [(usize, u64, &str); 3] = [
        (88, u64::MAX, "high-water mark"),
        (40, u64::MAX / 2, "data root"),
        (104, u64::MAX, "allocator state"),
    ];
    for (at, value, field) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(STORE_FILE);
        std::fs::write(&file, &pristine).unwrap();
        // The allocator state is only named by a cleanly closed store's slot.
        for i in 0..2 {
            rewrite_slot(&file, i, put(at, value));
        }
        match Store::open(dir.path(), opts()) {
            Err(e) => assert!(e.to_string().contains(field), "{e} should name the {field}"),
            Ok(_) => panic!("opened a store whose slots say {field} = {value}"),
        }
    }
    // One slot damaged: the store opens at the other one and says so.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(STORE_FILE);
    std::fs::write(&file, &pristine).unwrap();
    let newest = if slot_txn(&file, 0) > slot_txn(&file, 1) {
        0
    } else {
        1
    };
    let older_txn = slot_txn(&file, 1 - newest);
    rewrite_slot(&file, newest, put(88, u64::MAX));
    let s = Store::open(dir.path(), opts()).expect("opens at the other slot");
    assert_eq!(
        s.open_report().discarded_commit,
        Some(slot_txn(&file, newest))
    );
    assert!(s.latest_version().unwrap_or(0) <= older_txn);
}

#[test]
fn a_truncated_store_is_named_truncated_and_left_as_found_by_every_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let file = dir.path().join(STORE_FILE);
    // Half of what is used (past it lies the reserve, which may go).
    let hwm = Store::open(dir.path(), opts()).unwrap().stats().hwm_pages;
    let cut = hwm / 2 * 4096 + 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(cut)
        .unwrap();
    // Twice: a failed open must not change the file (it used to grow it
    // while saving allocator state, so the second open saw other damage).
    let errors: Vec<String> = (0..2)
        .map(|_| match Store::open(dir.path(), opts()) {
            Ok(_) => panic!("a store cut to half opened"),
            Err(e) => e.to_string(),
        })
        .collect();
    assert_eq!(errors[0], errors[1]);
    assert!(errors[0].contains("truncated"), "{}", errors[0]);
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        cut,
        "the failed opens changed the file"
    );
}
