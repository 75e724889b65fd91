//! Entry points for the fuzz targets in `fuzz/` and their smoke tests:
//! everything the store decodes from disk, fed arbitrary bytes. Each must
//! return (an error is fine) and never panic, whatever the bytes.

use std::ops::RangeFull;

use super::format::{PAGE_SIZE, Slot, verify_run};
use super::node::{PageRef, validate};
use super::{SimBackend, Store, StoreOptions, alloc, node};

/// One page as the readers see it: the header and checksum check, then, if
/// the page passes as a node, every accessor a reader or the writer uses.
/// `bytes` is cut or zero-padded to a page; the checksum is made to hold
/// (when the first byte asks for it) so that the node decoding is reached.
pub fn page(bytes: &[u8]) {
    let mut p = vec![0u8; PAGE_SIZE];
    let n = bytes.len().min(PAGE_SIZE);
    p[..n].copy_from_slice(&bytes[..n]);
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        // Reseal: the page passes the checksum, the content is arbitrary.
        p[0] &= 0x7f;
        super::format::put_u64(&mut p, 8, 0);
        super::format::put_u64(&mut p, 16, 7);
        let sum = super::format::checksum(&p);
        super::format::put_u64(&mut p, 8, sum);
    }
    let _ = verify_run(&p, 7, &[1, 2, 3, 4]);
    if validate(&p, 7).is_ok() {
        let r = PageRef { bytes: &p };
        for i in 0..r.len() {
            if r.is_leaf() {
                let _ = r.entry(i);
            } else {
                let _ = r.child(i);
            }
            let _ = r.key(i);
        }
        let _ = r.used();
        let n = node::Node::from_page(r);
        let probe = bytes.get(..bytes.len().min(8)).unwrap_or_default();
        if n.is_leaf() {
            let _ = n.search(probe);
            for i in 0..n.len() {
                let _ = n.entry(i);
            }
        } else {
            let _ = n.child_index(probe);
        }
    }
    // Loaded as an open loads it (its own pages given back), then every
    // deadlist released and freed: a state that passes the load must never
    // free a page twice (the allocator's debug checks panic if it does).
    let own = 1 + u64::from(bytes.get(1).copied().unwrap_or(0) % 4);
    if let Ok((mut a, mut dead)) = alloc::load_state(&p, 7, own) {
        let mut out = Vec::new();
        dead.release(&Default::default(), None, &mut out);
        for (start, len) in out {
            a.free(start, len);
        }
    }
}

/// A commit slot: decoding, then the field checks of one whose checksum
/// holds (resealed when the first byte asks for it, as [`page`] does).
pub fn slot(bytes: &[u8]) {
    let mut s = vec![0u8; super::format::SLOT_SIZE];
    let n = bytes.len().min(s.len());
    s[..n].copy_from_slice(&bytes[..n]);
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        s[..8].copy_from_slice(&super::format::MAGIC);
        let sum = super::format::checksum(&s[..120]);
        super::format::put_u64(&mut s, 120, sum);
    }
    if let Ok(Some(slot)) = Slot::decode(&s) {
        let _ = slot.validate();
    }
}

/// A whole store file: opened, every kept version read key by key with its
/// extents, then checked by fsck.
pub fn image(bytes: &[u8]) {
    let cap = (bytes.len() as u64).max(1 << 20);
    let Ok(sim) = SimBackend::from_image(bytes, cap) else {
        return;
    };
    let opts = StoreOptions {
        map_size: 1 << 26,
        ..StoreOptions::default()
    };
    let Ok(store) = Store::open_backend(Box::new(sim), opts) else {
        return;
    };
    for v in store.versions() {
        let Ok(snap) = store.snapshot(v.id) else {
            continue;
        };
        let Ok(range) = snap.range::<RangeFull>(..) else {
            continue;
        };
        for item in range.take(100_000) {
            let Ok((_, e)) = item else {
                break;
            };
            if let Some(x) = e.extent {
                let _ = snap.read_extent(&x);
            }
        }
    }
    let _ = store.fsck();
}

/// A valid store image to start from: a few versions of small and large
/// values (for the fuzzers' seed corpus and the smoke tests' mutations).
pub fn seed_image() -> Vec<u8> {
    let sim = std::sync::Arc::new(SimBackend::new(8 << 20).expect("sim backend"));
    let opts = StoreOptions {
        map_size: 1 << 26,
        reserve: 0,
        ..StoreOptions::default()
    };
    {
        let store = Store::open_backend(Box::new(sim.clone()), opts).expect("new store");
        for v in 0..3u8 {
            let mut t = store.begin_write().expect("txn");
            for k in 0..40u32 {
                let key = format!("key{k:03}");
                let len = if k % 7 == 0 { 5000 } else { 20 + k as usize };
                t.put(key.as_bytes(), &vec![v ^ k as u8; len]).expect("put");
            }
            t.commit("seed").expect("commit");
        }
        store.close().expect("close");
    }
    sim.live_image()
}
