//! Shards: which shard owns an inode, and each shard's I/O thread.
//!
//! Routing is one pure function of the inode number. Each shard has an I/O
//! thread, pinned to the shard's CPU, that runs the jobs the committer hands
//! it: hashing and writing that shard's dirty blocks into the store, in
//! parallel with the other shards'.

use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use parking_lot::Mutex;

/// The shard of an inode among `n`.
pub fn shard_of(ino: u64, n: usize) -> usize {
    // Fibonacci hashing: consecutive inode numbers spread over the shards.
    ((ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % n as u64) as usize
}

/// Pins a thread of this process (by thread id; 0 is the caller) to one CPU.
pub fn pin_thread(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit set, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`; callers pass a CPU below the
    // CPU count, far below the set's capacity (CPU_SETSIZE).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a thread id of this process (or 0) and a set of the size passed.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub type Job = Box<dyn FnOnce() + Send>;

/// One worker thread per shard, each pinned to its CPU.
pub struct IoThreads {
    senders: Vec<Sender<Job>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl IoThreads {
    /// How many threads (one per shard).
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    pub fn spawn(n: usize) -> std::io::Result<IoThreads> {
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = channel::<Job>();
            let handle = std::thread::Builder::new()
                .name(format!("zippy-io-{i}"))
                .spawn(move || {
                    if n > 1
                        && let Err(e) = pin_thread(0, i % cpus)
                    {
                        tracing::warn!("I/O thread {i} left unpinned: {e}");
                    }
                    while let Ok(job) = rx.recv() {
                        job();
                    }
                })?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(IoThreads {
            senders,
            handles: Mutex::new(handles),
        })
    }

    /// Runs `job` on shard `shard`'s thread; false if that thread is gone.
    pub fn run(&self, shard: usize, job: Job) -> bool {
        self.senders[shard % self.senders.len()].send(job).is_ok()
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        self.senders.clear();
        for h in self.handles.lock().drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_inodes_spread_over_the_shards() {
        let mut counts = [0usize; 4];
        for ino in 1..10_001 {
            counts[shard_of(ino, 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 2000), "{counts:?}");
    }

    #[test]
    fn jobs_run_on_their_shard_threads() {
        let io = IoThreads::spawn(2).unwrap();
        let (tx, rx) = channel();
        for shard in 0..4 {
            let tx = tx.clone();
            assert!(io.run(
                shard,
                Box::new(move || {
                    let name = std::thread::current().name().map(str::to_string);
                    tx.send((shard, name)).unwrap();
                })
            ));
        }
        let mut got: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got[1].1.as_deref(), Some("zippy-io-1"));
        assert_eq!(got[2].1.as_deref(), Some("zippy-io-0"));
    }
}
