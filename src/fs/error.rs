//! The filesystem's one error type: an errno, and where it came from.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A POSIX error the caller should see as is (ENOENT, EEXIST, ...).
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Errno(i32),
    /// The store failed underneath; reported as EIO (ENOSPC for a full disk).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A filesystem record in the store is damaged (reported as EIO).
    #[error("damaged store: {0}")]
    Corrupt(String),
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
            FsError::Store(StoreError::Quota) => libc::EDQUOT,
            // What else the disk under the store can say, passed on as it
            // is; anything else is an I/O error.
            FsError::Store(StoreError::Io { source, .. }) => match source.raw_os_error() {
                Some(e @ (libc::EROFS | libc::EFBIG | libc::ENOMEM | libc::EIO)) => e,
                _ => libc::EIO,
            },
            FsError::Store(StoreError::KeyTooLong { .. }) => libc::ENAMETOOLONG,
            FsError::Store(StoreError::ValueTooLong { .. }) => libc::E2BIG,
            FsError::Store(_) | FsError::Corrupt(_) => libc::EIO,
        }
    }
}

/// Shorthand for `Err(FsError::Errno(e))`.
pub fn err<T>(e: i32) -> FsResult<T> {
    Err(FsError::Errno(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_errno_the_disk_can_give_reaches_the_caller_as_itself() {
        let from_disk = |e: i32| {
            FsError::from(StoreError::io(
                "write",
                std::io::Error::from_raw_os_error(e),
            ))
            .errno()
        };
        for e in [
            libc::ENOSPC,
            libc::EDQUOT,
            libc::EROFS,
            libc::EFBIG,
            libc::ENOMEM,
            libc::EIO,
        ] {
            assert_eq!(from_disk(e), e, "{}", std::io::Error::from_raw_os_error(e));
        }
        // Nothing else the store can meet means anything to a caller.
        assert_eq!(from_disk(libc::EBADF), libc::EIO);
        assert_eq!(FsError::from(StoreError::Poisoned).errno(), libc::EIO);
    }
}
