//! Profiling aid: N commits of 1,000 random 16-byte keys with 100-byte
//! values into a fresh store in a temporary directory, with the time spent
//! in commits. Run it under `perf record`, or with
//! `RUST_LOG=zippyfs=debug` for per-commit phase timings:
//!
//! ```sh
//! cargo run --release --example prof_insert -- 300 [pwritev|uring] [versions kept]
//! ```

use std::time::{Duration, Instant};

use zippyfs::store::{Retention, SplitMix64, Store, StoreOptions, WritePath};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let commits: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(300);
    let write_path = match args.next().as_deref() {
        Some("uring") => WritePath::IoUring,
        _ => WritePath::Pwritev,
    };
    let keep: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().expect("temporary directory");
    let opts = StoreOptions {
        map_size: 1 << 36,
        retention: Retention::last(keep),
        write_path,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), opts).expect("open store");
    let mut rng = SplitMix64(1);
    let value = [7u8; 100];
    let started = Instant::now();
    let mut in_commit = Duration::ZERO;
    for _ in 0..commits {
        let mut t = store.begin_write().expect("begin");
        for _ in 0..1000 {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            k[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
            t.put(&k, &value).expect("put");
        }
        let c = Instant::now();
        t.commit("prof").expect("commit");
        in_commit += c.elapsed();
    }
    println!(
        "{commits} commits ({write_path:?}, keep {keep}): {:?} in all, {:?} in commits; {:?}",
        started.elapsed(),
        in_commit,
        store.stats()
    );
}
