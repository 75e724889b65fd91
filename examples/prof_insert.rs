use std::time::Instant;
use zippyfs::store::{Retention, SplitMix64, Store, StoreOptions};
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        StoreOptions {
            map_size: 1 << 36,
            retention: Retention::last(10),
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = SplitMix64(1);
    let val = [7u8; 100];
    let commits: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200);
    let t0 = Instant::now();
    let mut tc = std::time::Duration::ZERO;
    for c in 0..commits {
        let mut t = store.begin_write().unwrap();
        for _ in 0..1000 {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            k[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
            t.put(&k, &val).unwrap();
        }
        let tt = Instant::now();
        t.commit("x").unwrap();
        tc += tt.elapsed();
        if c % 100 == 99 {
            eprintln!(
                "{} commits: {:?} (commit part {:?}) {:?}",
                c + 1,
                t0.elapsed(),
                tc,
                store.stats()
            );
        }
    }
    eprintln!("total {:?}, commit {:?}", t0.elapsed(), tc);
}
