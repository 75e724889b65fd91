//! Sync (issue #16, being built): peers push each commit's change-set to a
//! server over QUIC, and the server streams it to every other peer of the
//! volume. This module uses `fs` and `store` through their public API and
//! never `fuse`.
//!
//! - `tree.rs`: the volume's tree by stable file id, and change-sets.
//! - `apply.rs`: the one pure function the log is applied with, and the
//!   conflict rules.
//! - `peer.rs`: a peer's and the server's logic, without I/O.
//! - `local.rs`: a peer's own filesystem as a tree, and changes written
//!   back into it.
//! - `wire.rs`: the protocol's frames.
//! - `sim.rs`: the deterministic simulation (tests).

pub mod apply;
pub mod local;
pub mod peer;
#[cfg(test)]
mod sim;
pub mod tree;
pub mod wire;
