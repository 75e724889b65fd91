//! The entry point of the request fuzz target (`fuzz/`) and its smoke
//! test: raw requests as `/dev/fuse` delivers them, decoded and run
//! against a real filesystem core, as the classic transport does.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::classic::{self, Handled};
use super::ops::Ops;
use crate::fs::{Fs, FsOptions};

/// A filesystem on a store whose directory is already gone from the
/// namespace (the open store file lives on), so nothing is left behind
/// however the fuzzer exits.
pub struct Target {
    ops: Ops,
    reply: Mutex<Vec<u8>>,
}

impl Target {
    /// # Panics
    /// If a store cannot be made in the temporary directory.
    pub fn new() -> Target {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("zippyfs-fuzz-{}-{n}", std::process::id()));
        let opts = FsOptions {
            shards: 2,
            dirty_limit: 4 << 20,
            io_threads: false,
            ..FsOptions::default()
        };
        let fs = Fs::mount(&dir, opts).expect("a store in the temporary directory");
        let _ = std::fs::remove_dir_all(&dir);
        Target {
            ops: Ops::new(Arc::new(fs), false, Duration::ZERO),
            reply: Mutex::new(vec![0u8; 1 << 20]),
        }
    }

    /// Handles one request (a request that waits for a commit gets it);
    /// returns the reply's error field (0 or a negative errno), if any.
    pub fn run(&self, request: &[u8]) -> Option<i32> {
        let mut reply = self.reply.lock();
        let len = match classic::handle(&self.ops, request, &mut reply) {
            Handled::Reply(len) => len,
            Handled::Commit(unique) => classic::commit_reply(&self.ops, unique, &mut reply)?,
            Handled::Nothing => return None,
        };
        let error = reply.get(4..8).filter(|_| len >= 16)?;
        Some(i32::from_le_bytes(error.try_into().ok()?))
    }
}

impl Default for Target {
    fn default() -> Self {
        Self::new()
    }
}
