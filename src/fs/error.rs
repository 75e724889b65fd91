//! The filesystem's one error type: an errno, and where it came from.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A POSIX error the caller should see as is (ENOENT, EEXIST, ...).
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Errno(i32),
    /// The store failed underneath; reported as EIO (ENOSPC for a full disk).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// The errno this error is reported to the kernel as: the one place
    /// where errors become numbers.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Errno(e) => *e,
            FsError::Store(StoreError::NoSpace) | FsError::Store(StoreError::MapFull { .. }) => {
                libc::ENOSPC
            }
            FsError::Store(StoreError::KeyTooLong { .. }) => libc::ENAMETOOLONG,
            FsError::Store(StoreError::ValueTooLong { .. }) => libc::E2BIG,
            FsError::Store(_) => libc::EIO,
        }
    }
}

/// Shorthand for `Err(FsError::Errno(e))`.
pub fn err<T>(e: i32) -> FsResult<T> {
    Err(FsError::Errno(e))
}
