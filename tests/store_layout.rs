//! Where a commit's writes land: a small commit (one changed block, as an
//! `fsync` after one write makes) must reach the device as one stretch of
//! pages plus the commit slot, not one write per edited node scattered over
//! the file's free holes: a disk pays per request (a seek on a spinning disk).
//! On this machine's virtio disk the gain is small;
//! `perf/notes/2026-11-26-fsync-commit-cost.md` has both measurements.

use std::sync::Arc;

use zippyfs::store::{Retention, SimBackend, SplitMix64, Store, StoreOptions};

const DEVICE: u64 = 1 << 30;

fn opts() -> StoreOptions {
    StoreOptions {
        map_size: DEVICE,
        retention: Retention::last(20),
        ..StoreOptions::default()
    }
}

/// The writes of the last sync, adjacent ones merged: (offset, length).
fn stretches(dev: &SimBackend) -> Vec<(u64, u64)> {
    let mut w = dev.last_synced_writes();
    w.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (off, len) in w {
        match out.last_mut() {
            Some((o, l)) if *o + *l == off => *l += len,
            _ => out.push((off, len)),
        }
    }
    out
}

#[test]
fn a_small_commit_writes_one_stretch_and_the_slot_even_when_space_is_fragmented() {
    let dev = Arc::new(SimBackend::new(DEVICE).unwrap());
    let store = Store::open_backend(Box::new(dev.clone()), opts()).unwrap();
    // A tree several levels deep: 20,000 keys with 64 KiB-ish block maps.
    let mut t = store.begin_write().unwrap();
    for k in 0u64..20_000 {
        t.put(&k.to_be_bytes(), &[k as u8; 40]).unwrap();
    }
    t.commit("fill").unwrap();
    // Churn: random keys rewritten and extents written and replaced, so that
    // the versions retention drops leave holes all over the file.
    let mut rng = SplitMix64(7);
    for round in 0..200u64 {
        let mut t = store.begin_write().unwrap();
        for _ in 0..rng.below(40) + 1 {
            let k = rng.below(20_000);
            if rng.below(3) == 0 {
                let len = (rng.below(16) + 1) as usize * 4096;
                let e = t.write_extent(&vec![round as u8; len]).unwrap();
                t.put_with_extent(&k.to_be_bytes(), b"block", e).unwrap();
            } else {
                t.put(&k.to_be_bytes(), &[round as u8; 40]).unwrap();
            }
        }
        t.commit("churn").unwrap();
    }
    let free_ranges = store.stats().free_pages;
    assert!(
        free_ranges > 0,
        "the churn left no free space to choose from"
    );

    // Now the fsync pattern: one 64 KiB block rewritten, one commit.
    let mut pieces = Vec::new();
    for i in 0..50u64 {
        let mut t = store.begin_write().unwrap();
        let e = t.write_extent(&vec![i as u8; 64 << 10]).unwrap();
        t.put_with_extent(&rng.below(20_000).to_be_bytes(), b"block", e)
            .unwrap();
        t.commit("fsync").unwrap();
        let s = stretches(&dev);
        // The slot is one sector in the file's first two pages.
        let body: Vec<_> = s.iter().filter(|(off, _)| *off >= 8192).collect();
        assert!(
            s.iter().any(|(off, len)| *off < 8192 && *len == 512),
            "no slot write among {s:?}"
        );
        eprintln!("commit {i}: {body:?}");
        pieces.push(body.len());
    }
    // Mostly one stretch; where the block fits a hole with no room after
    // it, the nodes (both trees' together) take one hole of their own.
    // (Allocating page by page into the best-fitting hole wrote 5 pieces
    // every time here; before both trees' nodes were placed together, 3 in
    // 4 commits of 50.)
    pieces.sort_unstable();
    let median = pieces[pieces.len() / 2];
    let worst = pieces[pieces.len() - 1];
    assert!(
        median == 1 && worst <= 2,
        "one-block commits were written in {pieces:?} pieces"
    );
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "{report}");
}
