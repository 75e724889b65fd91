//! The filesystem core's block cache and shard routing, without FUSE: what
//! a request costs once it has reached the daemon, in operations per second
//! per core.
//!
//! - `shard_of`: routing 1,000 inode numbers to one of 2 shards.
//! - `cache_write_4k`: 4 KiB writes at random 4 KiB offsets of a 64 MiB
//!   file, into the dirty cache (no commit; the dirty limit is above the
//!   file's size).
//! - `cache_read_4k_dirty`: 4 KiB reads of blocks that sit in the dirty
//!   cache.
//! - `cache_read_4k_committed`: 4 KiB reads of committed blocks, through
//!   the store's read-only map.
//! - `cache_write_4k_2_threads`: two threads, each writing its own file (in
//!   its own shard), 1,000 writes each per iteration: scaling across the
//!   two cores.
//!
//! Run with `cargo bench --bench cache`; results with the machine and date
//! go to a note in perf/notes/ (tuning.md quotes the current ones).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use zippyfs::fs::{Ctx, Fs, FsOptions, ROOT};
use zippyfs::shard::shard_of;

const FILE: u64 = 64 << 20;
const BLOCK: u64 = 4096;

fn fs_with(shards: usize) -> (tempfile::TempDir, Arc<Fs>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FsOptions {
        shards,
        dirty_limit: 1 << 30,
        ..FsOptions::default()
    };
    let fs = Fs::mount(dir.path(), opts).expect("mount");
    (dir, Arc::new(fs))
}

fn file(fs: &Fs, name: &str) -> u64 {
    let ctx = Ctx {
        uid: 0,
        gid: 0,
        umask: 0,
    };
    let (i, fh) = fs
        .create(ctx, ROOT, name.as_bytes(), 0o644)
        .expect("create");
    let _ = fh;
    i.ino
}

/// A cheap, repeatable sequence of block offsets.
fn offsets(n: usize) -> Vec<u64> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (FILE / BLOCK)) * BLOCK
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("shard_of", |b| {
        b.iter(|| {
            let mut acc = 0usize;
            for ino in 1000..2000u64 {
                acc += shard_of(black_box(ino), 2);
            }
            acc
        })
    });

    let data = vec![7u8; BLOCK as usize];
    let offs = offsets(1000);
    {
        let (_d, fs) = fs_with(2);
        let ino = file(&fs, "w");
        fs.write(ino, FILE - BLOCK, &data).expect("size");
        g.bench_function("cache_write_4k", |b| {
            b.iter(|| {
                for &o in &offs {
                    fs.write(ino, o, &data).expect("write");
                }
            })
        });
        g.bench_function("cache_read_4k_dirty", |b| {
            b.iter(|| {
                for &o in &offs {
                    black_box(fs.read(ino, o, BLOCK as u32).expect("read"));
                }
            })
        });
        fs.fsync().expect("commit");
        g.bench_function("cache_read_4k_committed", |b| {
            b.iter(|| {
                for &o in &offs {
                    black_box(fs.read(ino, o, BLOCK as u32).expect("read"));
                }
            })
        });
        fs.shutdown().expect("shutdown");
    }
    {
        let (_d, fs) = fs_with(2);
        // Two files whose inodes fall in different shards.
        let mut inos = Vec::new();
        for n in 0.. {
            let ino = file(&fs, &format!("t{n}"));
            if inos.iter().all(|&i| shard_of(i, 2) != shard_of(ino, 2)) {
                inos.push(ino);
            }
            if inos.len() == 2 {
                break;
            }
        }
        g.throughput(Throughput::Elements(2000));
        g.bench_function("cache_write_4k_2_threads", |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for &ino in &inos {
                        let (fs, offs, data) = (&fs, &offs, &data);
                        s.spawn(move || {
                            for &o in offs {
                                fs.write(ino, o, data).expect("write");
                            }
                        });
                    }
                });
            })
        });
        fs.shutdown().expect("shutdown");
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
