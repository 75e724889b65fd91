//! The kernel's FUSE-over-io_uring interface (`include/uapi/linux/fuse.h`,
//! protocol 7.42, where it was added; the rest of the protocol is spoken at
//! 7.40, what fuser negotiates), as laid out in memory. Every struct's size and field
//! offsets are checked against the uapi values by the tests below.
//!
//! ## Ring entry
//!
//! Each entry a queue registers is two buffers, given to the kernel as an
//! iovec pair in the `REGISTER` command's SQE:
//!
//! ```text
//! iov[0]: fuse_uring_req_header (288 bytes)
//!    0  128  in_out          fuse_in_header on fetch, fuse_out_header on commit
//!  128  128  op_in           the opcode's fixed in-struct (fuse_write_in, ...)
//!  256   32  ring_ent_in_out flags, commit_id, payload_sz, padding, reserved
//! iov[1]: payload buffer of max(8192, max_write, max_pages x 4 KiB) bytes
//!         (names, write data, read replies); see `super::payload_len`
//! ```
//!
//! ## Commands (`IORING_OP_URING_CMD` on the `/dev/fuse` descriptor, SQE128)
//!
//! `cmd_op` is `FUSE_IO_URING_CMD_REGISTER` (hand an entry to queue `qid`)
//! or `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` (reply to the request named by
//! `commit_id` and take the next one, in one submission); the 80-byte
//! command area of the SQE holds a [`UringCmdReq`].

use std::path::Path;

pub const IN_OUT_HEADER_SZ: usize = 128;
pub const OP_IN_OUT_SZ: usize = 128;

pub const CMD_REGISTER: u32 = 1;
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntInOut {
    pub flags: u64,
    /// The request's `unique`, echoed in [`UringCmdReq::commit_id`].
    pub commit_id: u64,
    /// Bytes valid in the payload buffer, in either direction.
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}

/// `struct fuse_uring_req_header`: the first buffer of a ring entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReqHeader {
    pub in_out: [u8; IN_OUT_HEADER_SZ],
    pub op_in: [u8; OP_IN_OUT_SZ],
    pub ent_in_out: EntInOut,
}

/// `struct fuse_uring_cmd_req`, in the SQE's command area.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringCmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}

/// Whether the kernel would accept FUSE over io_uring now: the `fuse`
/// module's `enable_uring` parameter is `Y`. Missing means a kernel without
/// the feature.
pub fn kernel_enables_uring() -> Result<bool, String> {
    enable_uring_at(Path::new(ENABLE_URING_PARAM))
}

/// The switch for FUSE over io_uring (off by default; root may turn it on).
pub const ENABLE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

fn enable_uring_at(param: &Path) -> Result<bool, String> {
    match std::fs::read_to_string(param) {
        Ok(v) => Ok(v.trim() == "Y"),
        Err(e) => Err(format!(
            "{} cannot be read ({e}): this kernel has no FUSE over io_uring (Linux 6.14 or later has it)",
            param.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn ring_structs_have_the_kernel_layout() {
        assert_eq!(size_of::<EntInOut>(), 32);
        assert_eq!(offset_of!(EntInOut, flags), 0);
        assert_eq!(offset_of!(EntInOut, commit_id), 8);
        assert_eq!(offset_of!(EntInOut, payload_sz), 16);
        assert_eq!(offset_of!(EntInOut, padding), 20);
        assert_eq!(offset_of!(EntInOut, reserved), 24);

        assert_eq!(size_of::<ReqHeader>(), 288);
        assert_eq!(offset_of!(ReqHeader, in_out), 0);
        assert_eq!(offset_of!(ReqHeader, op_in), 128);
        assert_eq!(offset_of!(ReqHeader, ent_in_out), 256);

        // Fits the 80-byte command area of a 128-byte SQE.
        assert_eq!(size_of::<UringCmdReq>(), 24);
        assert_eq!(offset_of!(UringCmdReq, commit_id), 8);
        assert_eq!(offset_of!(UringCmdReq, qid), 16);
    }

    #[test]
    fn enable_uring_parameter_is_read_and_its_absence_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("enable_uring");
        std::fs::write(&p, "Y\n").unwrap();
        assert_eq!(enable_uring_at(&p), Ok(true));
        std::fs::write(&p, "N\n").unwrap();
        assert_eq!(enable_uring_at(&p), Ok(false));
        let err = enable_uring_at(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("no FUSE over io_uring"), "{err}");
    }
}
