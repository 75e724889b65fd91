//! Profiling aid: loads 1M random 16-byte keys (100-byte values, 1,000 per
//! commit), then times random point lookups of existing keys.
//!
//! ```sh
//! cargo run --release --example prof_lookup -- [lookups]
//! ```

use std::time::Instant;

use zippyfs::store::{Retention, SplitMix64, Store, StoreOptions};

fn key(rng: &mut SplitMix64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    k[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    k
}

fn main() {
    let lookups: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let opts = StoreOptions {
        map_size: 1 << 36,
        retention: Retention::last(10),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), opts).expect("open store");
    let mut rng = SplitMix64(1);
    let mut sample = Vec::new();
    for _ in 0..1000 {
        let mut t = store.begin_write().expect("begin");
        for j in 0..1000 {
            let k = key(&mut rng);
            if j % 10 == 0 {
                sample.push(k);
            }
            t.put(&k, &[7u8; 100]).expect("put");
        }
        t.commit("load").expect("commit");
    }
    let snap = store.latest().expect("snapshot");
    let mut pick = SplitMix64(9);
    let started = Instant::now();
    let mut found = 0u64;
    for _ in 0..lookups {
        let k = &sample[pick.below(sample.len() as u64) as usize];
        if snap.get(k).expect("get").is_some() {
            found += 1;
        }
    }
    let el = started.elapsed();
    println!(
        "{lookups} lookups, {found} found: {el:?} ({:.0} ns each)",
        el.as_nanos() as f64 / lookups as f64
    );
}
