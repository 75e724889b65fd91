//! The kernel side the core is given ([`KernelSide`]): the transport's
//! figures for `daemon.json`, and invalidations of what the kernel caches
//! when files change from elsewhere (sync), written to `/dev/fuse`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::counts::RequestCounts;
use super::wire::{notify_grow, notify_inval_entry, notify_inval_inode, notify_prune};
use crate::fs::KernelSide;

pub struct Kernel {
    pub counts: Arc<RequestCounts>,
    /// The session's `/dev/fuse` (a clone), if it could be had.
    pub notify: Option<OwnedFd>,
    /// The kernel refused FUSE_NOTIFY_PRUNE once (warned once).
    pub no_prune: std::sync::atomic::AtomicBool,
}

impl KernelSide for Kernel {
    fn status(&self) -> serde_json::Map<String, serde_json::Value> {
        self.counts.status()
    }

    fn invalidate(&self, inodes: &[u64], entries: &[(u64, Vec<u8>)]) {
        let Some(fd) = &self.notify else {
            return;
        };
        // ENOENT: the kernel had nothing cached for it.
        let quiet = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOENT);
        for (parent, name) in entries {
            if let Err(e) = notify_inval_entry(fd.as_fd(), *parent, name)
                && !quiet(&e)
            {
                tracing::debug!(parent, "could not invalidate an entry: {e}");
            }
        }
        for &ino in inodes {
            if let Err(e) = notify_inval_inode(fd.as_fd(), ino, 0)
                && !quiet(&e)
            {
                tracing::debug!(ino, "could not invalidate an inode: {e}");
            }
        }
    }

    fn grow(&self, ino: u64, size: u64, last: u8) {
        let Some(fd) = &self.notify else {
            return;
        };
        // ENOENT: the kernel has no inode for it, so no size to correct.
        if let Err(e) = notify_grow(fd.as_fd(), ino, size, last)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(ino, size, "could not tell the kernel a new size: {e}");
        }
    }

    fn prune(&self, inodes: &[u64]) {
        let Some(fd) = &self.notify else {
            return;
        };
        // The kernel reads node ids 512 at a time; keep each write small.
        for part in inodes.chunks(512) {
            if let Err(e) = notify_prune(fd.as_fd(), part) {
                // An older kernel (before 6.18): such a file shows its old
                // size and times until the kernel drops it by itself.
                if !self
                    .no_prune
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        "the kernel cannot be told to let go of inodes ({e}): with the \
                         writeback cache, files changed by sync may show old sizes and \
                         times; mount with -o writeback_cache=off to avoid it"
                    );
                }
                return;
            }
        }
    }
}
