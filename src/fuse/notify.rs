//! The kernel side the core is given ([`KernelSide`]): the transport's
//! figures for `daemon.json`, and invalidations of what the kernel caches
//! when files change from elsewhere (sync), written to `/dev/fuse`.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::counts::RequestCounts;
use super::wire::{notify_inval_entry, notify_inval_inode};
use crate::fs::KernelSide;

pub struct Kernel {
    pub counts: Arc<RequestCounts>,
    /// The session's `/dev/fuse` (a clone), if it could be had.
    pub notify: Option<OwnedFd>,
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
}
