//! Store engine benchmarks: `zippyfs::store` against redb, side by side.
//!
//! Every group benchmarks both engines (`<group>/zippyfs` and `<group>/redb`),
//! so one run gives both numbers. Commits are durable on both sides: a
//! zippyfs commit is one batch of writes and one `fdatasync`, redb uses its
//! default `Durability::Immediate`. redb keeps only the newest state, so the
//! zippyfs store is compared with retention "last 1 version"; `insert_1m`
//! also runs it keeping the last 10 versions (`zippyfs_keep10`), to show
//! what history costs. Databases live in tempdirs under /tmp.
//!
//! - `insert_1m`: 1,000,000 random 16-byte keys with 100-byte values, 1,000
//!   inserts per commit, into a fresh database (creating the tempdir and
//!   opening the database, and closing it afterwards, are not timed).
//! - `lookup_random`: batches of 10,000 point lookups of random existing keys
//!   in a database holding those 1M keys (loaded once per engine, untimed).
//! - `range_scan`: 1,000 consecutive entries from a random existing key,
//!   touching every key and value, in the same preloaded database.
//! - `commit_latency`: one write transaction putting one new random key with
//!   a 100-byte value, committed durably, in the same preloaded database.
//!
//! Run with `cargo bench --bench store` (a full run takes several minutes:
//! `insert_1m` alone is 11 loads of 1M keys per engine, warm-up included);
//! one group: `cargo bench --bench store -- lookup_random`. Record results,
//! with the machine and the date, in perf/notes/ (the last:
//! 2026-11-26-store-vs-redb.md).

use std::cell::OnceCell;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use redb::{Database, ReadableDatabase, TableDefinition};
use tempfile::TempDir;
use zippyfs::store::{Retention, Store, StoreOptions};

const KEYS: usize = 1_000_000;
const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;
const PER_COMMIT: usize = 1_000;
const LOOKUP_BATCH: usize = 10_000;
const SCAN_LEN: usize = 1_000;
const KEY_SEED: u64 = 0x5EED_0001;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");

/// A small deterministic generator, so every run uses the same keys.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn key(&mut self) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        k[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        k
    }
}

/// The benchmark's keys, in insertion (random) order.
fn keys() -> Vec<[u8; KEY_LEN]> {
    let mut rng = SplitMix64(KEY_SEED);
    (0..KEYS).map(|_| rng.key()).collect()
}

/// The value stored under the `i`th key: random bytes, the index in front.
fn value(template: &[u8; VALUE_LEN], i: usize) -> [u8; VALUE_LEN] {
    let mut v = *template;
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

fn value_template() -> [u8; VALUE_LEN] {
    let mut rng = SplitMix64(!KEY_SEED);
    std::array::from_fn(|_| rng.next_u64() as u8)
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("zippyfs-bench-")
        .tempdir_in("/tmp")
        .expect("create tempdir in /tmp")
}

fn open_zippy(dir: &Path, keep: usize) -> Store {
    let opts = StoreOptions {
        map_size: 1 << 36,
        retention: Retention::last(keep),
        ..StoreOptions::default()
    };
    Store::open(&dir.join("zippy"), opts).expect("open zippyfs store")
}

fn open_redb(dir: &Path) -> Database {
    Database::create(dir.join("redb.db")).expect("create redb database")
}

/// Inserts every key, `PER_COMMIT` per durable commit.
fn load_zippy(store: &Store, keys: &[[u8; KEY_LEN]], template: &[u8; VALUE_LEN]) {
    for (c, chunk) in keys.chunks(PER_COMMIT).enumerate() {
        let mut t = store.begin_write().expect("zippyfs begin_write");
        for (j, k) in chunk.iter().enumerate() {
            t.put(k, &value(template, c * PER_COMMIT + j))
                .expect("zippyfs put");
        }
        t.commit("bench load").expect("zippyfs commit");
    }
}

/// Inserts every key, `PER_COMMIT` per durable commit.
fn load_redb(db: &Database, keys: &[[u8; KEY_LEN]], template: &[u8; VALUE_LEN]) {
    for (c, chunk) in keys.chunks(PER_COMMIT).enumerate() {
        let txn = db.begin_write().expect("redb begin_write");
        {
            let mut table = txn.open_table(TABLE).expect("redb open_table");
            for (j, k) in chunk.iter().enumerate() {
                table
                    .insert(k.as_slice(), value(template, c * PER_COMMIT + j).as_slice())
                    .expect("redb insert");
            }
        }
        txn.commit().expect("redb commit");
    }
}

/// A database holding the 1M keys, kept for the benchmarks that need one.
/// Fields drop in order: the database closes before its directory goes.
struct Loaded<D> {
    db: D,
    _dir: TempDir,
}

fn preload_zippy(keys: &[[u8; KEY_LEN]], template: &[u8; VALUE_LEN]) -> Loaded<Store> {
    let dir = tempdir();
    let db = open_zippy(dir.path(), 1);
    let started = Instant::now();
    load_zippy(&db, keys, template);
    eprintln!(
        "preloaded zippyfs with {KEYS} keys in {:?}",
        started.elapsed()
    );
    Loaded { db, _dir: dir }
}

fn preload_redb(keys: &[[u8; KEY_LEN]], template: &[u8; VALUE_LEN]) -> Loaded<Database> {
    let dir = tempdir();
    let db = open_redb(dir.path());
    let started = Instant::now();
    load_redb(&db, keys, template);
    eprintln!("preloaded redb with {KEYS} keys in {:?}", started.elapsed());
    Loaded { db, _dir: dir }
}

fn insert_1m(c: &mut Criterion) {
    let keys = keys();
    let template = value_template();
    let mut group = c.benchmark_group("insert_1m");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        // One 1M-key load takes many seconds, so each sample is one load (a
        // target time below 10 loads' worth keeps it so); criterion then
        // warns that it cannot complete 10 samples in that time: expected.
        .measurement_time(Duration::from_secs(60))
        .throughput(Throughput::Elements(KEYS as u64));

    for (name, keep) in [("zippyfs", 1), ("zippyfs_keep10", 10)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempdir();
                    let store = open_zippy(dir.path(), keep);
                    let started = Instant::now();
                    load_zippy(&store, &keys, &template);
                    total += started.elapsed();
                    drop(store);
                }
                total
            })
        });
    }

    group.bench_function("redb", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempdir();
                let db = open_redb(dir.path());
                let started = Instant::now();
                load_redb(&db, &keys, &template);
                total += started.elapsed();
                drop(db);
            }
            total
        })
    });

    group.finish();
}

/// Lookups, scans and single-insert commits on databases preloaded with the
/// 1M keys. Each engine's database is built the first time one of its
/// benchmarks runs (so a filtered run builds only what it uses) and is kept
/// for the rest of the groups; `commit_latency` comes last as it adds keys.
fn preloaded(c: &mut Criterion) {
    let keys = keys();
    let template = value_template();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    let zippy: OnceCell<Loaded<Store>> = OnceCell::new();
    let redb: OnceCell<Loaded<Database>> = OnceCell::new();
    let zippy = || &zippy.get_or_init(|| preload_zippy(&keys, &template)).db;
    let redb = || &redb.get_or_init(|| preload_redb(&keys, &template)).db;

    let mut group = c.benchmark_group("lookup_random");
    group.throughput(Throughput::Elements(LOOKUP_BATCH as u64));
    group.bench_function("zippyfs", |b| {
        let store = zippy();
        let mut rng = SplitMix64(1);
        b.iter(|| {
            let snap = store.latest().expect("zippyfs snapshot");
            for _ in 0..LOOKUP_BATCH {
                let k = &keys[rng.below(KEYS)];
                let v = snap.get(black_box(k)).expect("zippyfs get");
                black_box(v.expect("key is present"));
            }
        })
    });
    group.bench_function("redb", |b| {
        let db = redb();
        let mut rng = SplitMix64(1);
        b.iter(|| {
            let txn = db.begin_read().expect("redb begin_read");
            let table = txn.open_table(TABLE).expect("redb open_table");
            for _ in 0..LOOKUP_BATCH {
                let k = &keys[rng.below(KEYS)];
                let v = table.get(black_box(k.as_slice())).expect("redb get");
                black_box(v.expect("key is present").value());
            }
        })
    });
    group.finish();

    // Starts leave at least SCAN_LEN entries before the end of the keys.
    let mut group = c.benchmark_group("range_scan");
    group.throughput(Throughput::Elements(SCAN_LEN as u64));
    group.bench_function("zippyfs", |b| {
        let store = zippy();
        let mut rng = SplitMix64(2);
        b.iter(|| {
            let snap = store.latest().expect("zippyfs snapshot");
            let start: &[u8] = &sorted[rng.below(KEYS - SCAN_LEN)];
            let mut n = 0usize;
            let mut sum = 0u64;
            for item in snap
                .range(black_box(start)..)
                .expect("zippyfs range")
                .take(SCAN_LEN)
            {
                let (k, e) = item.expect("zippyfs range entry");
                black_box(k);
                sum = sum.wrapping_add(e.value.len() as u64 + u64::from(e.value[0]));
                n += 1;
            }
            assert_eq!(n, SCAN_LEN);
            black_box(sum)
        })
    });
    group.bench_function("redb", |b| {
        let db = redb();
        let mut rng = SplitMix64(2);
        b.iter(|| {
            let txn = db.begin_read().expect("redb begin_read");
            let table = txn.open_table(TABLE).expect("redb open_table");
            let start: &[u8] = &sorted[rng.below(KEYS - SCAN_LEN)];
            let mut n = 0usize;
            let mut sum = 0u64;
            for item in table
                .range(black_box(start)..)
                .expect("redb range")
                .take(SCAN_LEN)
            {
                let (k, v) = item.expect("redb range entry");
                black_box(k.value());
                let v = v.value();
                sum = sum.wrapping_add(v.len() as u64 + u64::from(v[0]));
                n += 1;
            }
            assert_eq!(n, SCAN_LEN);
            black_box(sum)
        })
    });
    group.finish();

    // New random keys (128 random bits: no collision with the loaded ones).
    let mut group = c.benchmark_group("commit_latency");
    group.throughput(Throughput::Elements(1));
    group.bench_function("zippyfs", |b| {
        let store = zippy();
        let mut rng = SplitMix64(3);
        b.iter(|| {
            let k = rng.key();
            let mut t = store.begin_write().expect("zippyfs begin_write");
            t.put(&k, &template).expect("zippyfs put");
            black_box(t.commit("bench commit").expect("zippyfs commit"))
        })
    });
    group.bench_function("redb", |b| {
        let db = redb();
        let mut rng = SplitMix64(3);
        b.iter(|| {
            let k = rng.key();
            let txn = db.begin_write().expect("redb begin_write");
            {
                let mut table = txn.open_table(TABLE).expect("redb open_table");
                table
                    .insert(k.as_slice(), template.as_slice())
                    .expect("redb insert");
            }
            txn.commit().expect("redb commit")
        })
    });
    group.finish();
}

criterion_group!(benches, insert_1m, preloaded);
criterion_main!(benches);
