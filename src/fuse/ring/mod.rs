//! FUSE over io_uring (issue #7): one kernel queue, one pinned thread and
//! one ring per core. So far the interface's memory layout and the kernel
//! check; the transport itself comes next.

pub mod abi;
