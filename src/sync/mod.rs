//! Sync (issue #16, being built): peers push each commit's change-set to a
//! server over QUIC, and the server streams it to every other peer of the
//! volume. So far: the protocol's frames (`wire.rs`). The client, the
//! server and the change-sets come next; this module uses `fs` and
//! `store` through their public API and never `fuse`.

pub mod wire;
