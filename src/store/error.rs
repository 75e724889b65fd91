//! The store's one error type. Every variant says what the user can do about it.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store is in use by another process ({path})")]
    InUse { path: String },
    #[error("not a zippyfs store: {0}")]
    NotAStore(String),
    #[error("unsupported store: {0}")]
    Unsupported(String),
    #[error("corrupt page {page}: {reason}")]
    Corrupt { page: u64, reason: String },
    #[error("no space left on the device holding the store")]
    NoSpace,
    #[error("the disk quota of the store's owner is used up")]
    Quota,
    #[error(
        "store file would grow past its map size ({map_size} bytes); reopen with a larger map size"
    )]
    MapFull { map_size: u64 },
    #[error("key of {len} bytes is longer than the limit of {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("value of {len} bytes is longer than the limit of {max}")]
    ValueTooLong { len: usize, max: usize },
    #[error("version {0} is not kept")]
    NoSuchVersion(u64),
    #[error("extent at page {0} was not written by this transaction nor freed in it")]
    ForeignExtent(u64),
    #[error("an earlier write or sync failed; reopen the store to recover it")]
    Poisoned,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) => return StoreError::NoSpace,
            Some(libc::EDQUOT) => return StoreError::Quota,
            _ => {}
        }
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the device (or the owner's quota) is out of space: the one
    /// failure that leaves nothing unsure and passes once space is freed.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self,
            StoreError::NoSpace | StoreError::Quota | StoreError::MapFull { .. }
        )
    }

    pub fn corrupt(page: u64, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            page,
            reason: reason.into(),
        }
    }
}
