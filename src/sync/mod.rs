//! Sync (issue #16, being built): peers push each commit's change-set to a
//! server over QUIC, and the server streams it to every other peer of the
//! volume. This module uses `fs` and `store` through their public API and
//! never `fuse`.
//!
//! - `tree.rs`: the volume's tree by stable file id, and change-sets.
//! - `apply.rs`: the one pure function the log is applied with, and the
//!   conflict rules.
//! - `peer/`: a peer's and the server's logic, without I/O (`part.rs`: what goes in one push).
//! - `local.rs`: a peer's own filesystem as a tree, and changes written
//!   back into it.
//! - `wire.rs`: the protocol's frames; `tls.rs`: certificates and pinning.
//! - `server.rs`: `zippyfs serve` (`server/peers.rs`: its peers and
//!   their credentials; `server/cut.rs`: cutting a volume's log); `client/`: the mount's sync thread
//!   (`client/incoming.rs`: what it receives; `client/outgoing.rs`: what it
//!   sends); `view.rs`: its local tree,
//!   kept up to the last commit; `conf.rs`: `sync.conf`, `sync.state`, status.
//! - `snapshot.rs`: the volume as of a sequence, in parts (what the
//!   server keeps and sends in place of the log it cut).
//! - `sim/`: the deterministic simulation (tests).

pub mod apply;
pub mod client;
pub mod conf;
pub mod local;
pub mod patch;
pub mod peer;
pub mod server;
#[cfg(test)]
mod sim;
pub mod snapshot;
mod stream;
pub mod tls;
pub mod tree;
mod view;
pub mod wire;

use std::path::{Path, PathBuf};

/// Sync's errors: what went wrong, said so a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network: {0}")]
    Net(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Fs(#[from] crate::fs::FsError),
}

impl SyncError {
    pub fn io(path: &Path, source: std::io::Error) -> SyncError {
        SyncError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The disk (or the owner's quota) holding the store is full: this
    /// passes once there is room.
    pub fn is_no_space(&self) -> bool {
        match self {
            SyncError::Store(e) | SyncError::Fs(crate::fs::FsError::Store(e)) => e.is_no_space(),
            SyncError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }
}

impl From<wire::WireError> for SyncError {
    fn from(e: wire::WireError) -> SyncError {
        SyncError::Protocol(e.to_string())
    }
}

/// Writes a file whole or not at all: a temporary file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SyncError> {
    write_with_mode(path, bytes, ATOMIC_MODE)
}

/// Files sync writes whole for anyone to read (not keys).
const ATOMIC_MODE: u32 = 0o644;

/// As [`write_atomic`], readable by its owner only (keys, credentials).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SyncError> {
    write_with_mode(path, bytes, 0o600)
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SyncError> {
    use std::io::Write;
    write_atomic_with(path, mode, &mut |f| {
        f.write_all(bytes).map_err(|e| SyncError::io(path, e))
    })
}

/// As [`write_atomic`], the bytes written by `write` (a piece at a time).
pub fn write_atomic_in_pieces(
    path: &Path,
    write: &mut dyn FnMut(&mut std::fs::File) -> Result<(), SyncError>,
) -> Result<(), SyncError> {
    write_atomic_with(path, ATOMIC_MODE, write)
}

fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: &mut dyn FnMut(&mut std::fs::File) -> Result<(), SyncError>,
) -> Result<(), SyncError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let io = |e| SyncError::io(path, e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    // A write cut short (a full disk) must not keep what it took.
    let written = write(&mut f).and_then(|()| f.sync_all().map_err(io));
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// 32 bytes from the kernel's random source.
pub fn random32() -> Result<[u8; 32], SyncError> {
    use std::io::Read;
    let mut b = [0u8; 32];
    let p = Path::new("/dev/urandom");
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| SyncError::io(p, e))?;
    Ok(b)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write cut short (a full disk) leaves neither the file changed nor
    /// its temporary copy taking the room it got.
    #[test]
    fn a_file_write_cut_short_leaves_the_old_file_and_no_temporary_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.state");
        write_atomic(&path, b"old").unwrap();
        let r = write_atomic_with(&path, 0o600, &mut |f: &mut std::fs::File| {
            use std::io::Write;
            f.write_all(&[7u8; 1 << 16])
                .map_err(|e| SyncError::io(&path, e))?;
            Err(SyncError::io(
                &path,
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ))
        });
        assert!(r.is_err_and(|e| e.is_no_space()));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(
            !path.with_extension("tmp").exists(),
            "the temporary copy stayed"
        );
    }
}
