//! A commit's large blocks, hashed and written into the extents the
//! commit reserved for them: on the committing thread for a small commit,
//! else spread over every shard's I/O thread; adjacent extents go to the
//! file in one request, and to the disk early, a run at a time.

use std::sync::Arc;

use super::*;
use crate::store::{Store, StoreResult, extent_checksum};

impl Fs {
    /// Hashes and writes large dirty blocks into their reserved extents:
    /// each shard's on its I/O thread, all shards at once. Returns only when
    /// every job has finished, whatever failed.
    pub(super) fn write_blocks(&self, jobs: Vec<BlockJob>) -> FsResult<Vec<Vec<Written>>> {
        // A small commit (an fsync after a few writes) is done here: handing
        // it to other threads costs a cross-CPU wake-up each, more than
        // hashing and writing a few blocks.
        let bytes: u64 = jobs.iter().flat_map(|j| &j.blocks).map(|b| b.2.len).sum();
        let io = self.io.as_ref().filter(|_| bytes > INLINE_COMMIT_BYTES);
        self.step("blocks");
        let Some(io) = io else {
            return jobs
                .iter()
                .map(|j| write_block_job(&self.store, j).map_err(FsError::from))
                .collect();
        };
        #[cfg(test)]
        let boom = *self.panic_at.lock() == Some("blocks on an I/O thread");
        #[cfg(not(test))]
        let boom = false;
        // A large commit is usually one file's (one shard's) blocks: spread
        // them over every I/O thread, in contiguous runs of their extents,
        // so one big file is hashed and written on every core.
        let jobs: Vec<BlockJob> = jobs
            .into_iter()
            .flat_map(|j| split_job(j, io.len()))
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let total = jobs.len();
        let mut sent = 0;
        for (i, job) in jobs.into_iter().enumerate() {
            let store = Arc::clone(&self.store);
            let tx = tx.clone();
            let shard = job.shard;
            if io.run(
                shard,
                Box::new(move || {
                    if boom {
                        panic!("injected panic at commit step \"blocks on an I/O thread\"");
                    }
                    let _ = tx.send((i, write_block_job(&store, &job)));
                }),
            ) {
                sent += 1;
            }
        }
        drop(tx);
        // Every job that was handed out finishes before this returns.
        let mut results: Vec<(usize, StoreResult<Vec<Written>>)> = rx.iter().take(sent).collect();
        if sent < total || results.len() < sent {
            // A job that never answered panicked (or its thread is gone):
            // what it wrote is unknown.
            self.fail(format!(
                "{} of {total} block writers did not finish (a panic on an I/O thread)",
                total - results.len()
            ));
            return err(libc::EIO);
        }
        results.sort_by_key(|r| r.0);
        results
            .into_iter()
            .map(|(_, r)| r.map_err(FsError::from))
            .collect()
    }
}

/// Commits with at most this much block data hash and write it on the
/// committing thread (see `write_blocks`).
const INLINE_COMMIT_BYTES: u64 = 1 << 20;

/// Large dirty blocks of one shard (or a run of them), with the extents
/// reserved for them, for the I/O thread `shard`.
pub(super) struct BlockJob {
    pub(super) shard: usize,
    pub(super) delta: Arc<Delta>,
    pub(super) blocks: Vec<(u64, u64, Reserved)>,
}

/// A block written into its extent.
pub(super) struct Written {
    pub(super) ino: u64,
    pub(super) idx: u64,
    pub(super) extent: Reserved,
    pub(super) hash: [u8; 32],
    pub(super) sum: u64,
}

/// `job` as up to `n` jobs of contiguous runs of its blocks, one per I/O
/// thread, starting with the job's own shard.
fn split_job(job: BlockJob, n: usize) -> Vec<BlockJob> {
    if n <= 1 || job.blocks.len() < 2 {
        return vec![job];
    }
    let per = job.blocks.len().div_ceil(n);
    job.blocks
        .chunks(per)
        .enumerate()
        .map(|(i, run)| BlockJob {
            shard: (job.shard + i) % n,
            delta: Arc::clone(&job.delta),
            blocks: run.to_vec(),
        })
        .collect()
}

/// How much of a job's adjacent extents early writeback hands the disk at a
/// time: one request per 64 KiB block cost a system call and a virtio
/// notification each (perf/notes/2026-11-26-early-writeback.md).
const WRITEBACK_RUN: u64 = 1 << 20;

/// Hashes and writes one job's blocks; what each got, in the job's order.
fn write_block_job(store: &Store, job: &BlockJob) -> StoreResult<Vec<Written>> {
    let last = job.blocks.len().saturating_sub(1);
    // Extents written and not yet handed to the disk: first, last, bytes.
    let mut run: Option<(Reserved, Reserved, u64)> = None;
    // Adjacent extents hashed and not yet written: they go in one request.
    let mut batch: Vec<(Reserved, &[u8])> = Vec::new();
    let mut out = Vec::with_capacity(job.blocks.len());
    for (i, &(ino, idx, extent)) in job.blocks.iter().enumerate() {
        let data = job
            .delta
            .blocks
            .get(&(ino, idx))
            .and_then(|b| b.as_deref())
            .unwrap_or(&[]);
        out.push(Written {
            ino,
            idx,
            extent,
            hash: *blake3::hash(data).as_bytes(),
            sum: extent_checksum(data),
        });
        if i == last {
            write_batch(store, &mut batch, &mut run)?;
            if let Some((first, prev, _)) = run.take() {
                store.start_writeback(&first, &prev);
            }
            store.write_reserved(&extent, data)?;
            break;
        }
        let bytes: u64 = batch.iter().map(|(r, _)| r.len).sum();
        if batch
            .last()
            .is_some_and(|(prev, _)| !prev.adjoins(&extent) || bytes >= WRITE_BATCH)
        {
            write_batch(store, &mut batch, &mut run)?;
        }
        batch.push((extent, data));
    }
    Ok(out)
}

/// The most bytes of adjacent extents written in one request. Writing each
/// 64 KiB block alone, the I/O threads met on the file's inode lock in the
/// kernel at every block, and the one waiting spun there: a 1 GiB initial
/// sync took 5 s instead of 2.5 s. 1 MiB held the lock long enough to cost
/// the 70/30 mix 11%; 256 KiB left the suite's writes as they were
/// (perf/notes/2026-12-05-initial-sync-io-threads.md).
const WRITE_BATCH: u64 = 256 << 10;

/// Writes `batch` (adjacent extents) in one request, and hands the disk
/// what has been written a run of adjacent extents at a time, while this
/// thread hashes and copies the next ones. The job's last block is not in
/// a batch: a commit of one block (an fsync) gains nothing from early
/// writeback, and its extent would go out apart from the nodes that
/// follow it, one more write request (measured:
/// perf/notes/2026-11-26-early-writeback.md).
fn write_batch(
    store: &Store,
    batch: &mut Vec<(Reserved, &[u8])>,
    run: &mut Option<(Reserved, Reserved, u64)>,
) -> StoreResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    store.write_reserved_many(batch)?;
    for (extent, _) in batch.drain(..) {
        *run = match run.take() {
            Some((first, prev, bytes)) if prev.adjoins(&extent) => {
                Some((first, extent, bytes + extent.len))
            }
            Some((first, prev, _)) => {
                store.start_writeback(&first, &prev);
                Some((extent, extent, extent.len))
            }
            None => Some((extent, extent, extent.len)),
        };
        if let Some((first, prev, bytes)) = *run
            && bytes >= WRITEBACK_RUN
        {
            store.start_writeback(&first, &prev);
            *run = None;
        }
    }
    Ok(())
}
