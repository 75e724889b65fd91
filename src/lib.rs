//! zippyfs: a versioned, thread-per-core FUSE filesystem that syncs through a
//! server. This crate holds the engine; `main.rs` is the command line.
//!
//! Layers, with dependencies pointing one way: `fuse` (the kernel side, a
//! thin adapter) -> `fs` (the filesystem core, FUSE-free) -> `store` (the
//! versioned copy-on-write B+Tree file; it knows nothing of files).
//! `control` (the daemon's socket for gc, fsck, status and umount) -> `fs`.
//! `sync` (the server, the peer in the mount daemon, their protocol) ->
//! `fs`, `store`.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod control;
pub mod fs;
pub mod fuse;
pub mod shard;
pub mod store;
pub mod sync;
pub mod tools;
