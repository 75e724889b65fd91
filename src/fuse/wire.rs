//! The FUSE wire format (`include/uapi/linux/fuse.h`, protocol 7.40 as
//! negotiated at INIT), decoded and encoded by hand so that both transports
//! hand the same [`Request`] to the same handlers ([`super::ops`]).
//!
//! ## A request
//!
//! ```text
//! fuse_in_header (40 bytes)
//!    0 u32 len      whole request, header included
//!    4 u32 opcode
//!    8 u64 unique   echoed in the reply
//!   16 u64 nodeid
//!   24 u32 uid     28 u32 gid     32 u32 pid    36 u16 total_extlen
//! arg 0: the opcode's fixed struct (fuse_write_in, ...; empty for some)
//! arg 1..: names (NUL-terminated), data
//! ```
//!
//! Through `/dev/fuse` the args follow the header back to back, so the
//! table's `arg` size for the opcode splits them; through the ring the
//! kernel already puts arg 0 in the entry's `op_in` area and the rest in
//! the payload buffer. Either way a handler sees `op` and `payload`.
//!
//! ## A reply
//!
//! `fuse_out_header` (16 bytes: u32 len, i32 error = -errno, u64 unique),
//! then the opcode's reply struct. Handlers write only the part after the
//! header ([`Out`]); the transport writes the header.
//!
//! All fields are little-endian (we run where the kernel runs) and read
//! with bounds checks: a short or malformed request is EINVAL, never a
//! panic.

use crate::fs::{Inode, Kind, Time};

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// Opcodes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;
}

/// A decoded request, the same for both transports.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub hdr: InHeader,
    /// Arg 0: the opcode's fixed struct.
    pub op: &'a [u8],
    /// The other args: names, data.
    pub payload: &'a [u8],
}

/// The fixed part of every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    /// `fuse_in_header`: len u32 @0, opcode u32 @4, unique u64 @8, nodeid
    /// u64 @16, uid u32 @24, gid u32 @28, pid u32 @32, total_extlen u16
    /// @36, padding u16 @38.
    pub fn parse(b: &[u8]) -> Option<InHeader> {
        let mut a = Args::new(b.get(..IN_HEADER_LEN)?);
        Some(InHeader {
            len: a.u32()?,
            opcode: a.u32()?,
            unique: a.u64()?,
            nodeid: a.u64()?,
            uid: a.u32()?,
            gid: a.u32()?,
            pid: a.u32()?,
        })
    }

    pub fn request<'a>(&self, op: &'a [u8], payload: &'a [u8]) -> Request<'a> {
        Request {
            hdr: *self,
            op,
            payload,
        }
    }
}

/// Writes `fuse_out_header` for a reply whose body is `body_len` bytes;
/// `error` is 0 or a negative errno.
pub fn out_header(dst: &mut [u8], unique: u64, error: i32, body_len: usize) -> Option<()> {
    let len = u32::try_from(OUT_HEADER_LEN + body_len).ok()?;
    let dst = dst.get_mut(..OUT_HEADER_LEN)?;
    dst[0..4].copy_from_slice(&len.to_le_bytes());
    dst[4..8].copy_from_slice(&error.to_le_bytes());
    dst[8..16].copy_from_slice(&unique.to_le_bytes());
    Some(())
}

/// A cursor over little-endian fields; `None` past the end.
pub struct Args<'a> {
    b: &'a [u8],
}

impl<'a> Args<'a> {
    pub fn new(b: &'a [u8]) -> Args<'a> {
        Args { b }
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.b.split_at_checked(n)?;
        self.b = rest;
        Some(head)
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(|_| ())
    }

    /// A NUL-terminated name (without the NUL).
    pub fn name(&mut self) -> Option<&'a [u8]> {
        let end = self.b.iter().position(|&c| c == 0)?;
        let name = &self.b[..end];
        self.b = &self.b[end + 1..];
        Some(name)
    }
}

/// The body of a reply, written into the transport's buffer.
pub struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

/// The reply does not fit the kernel's buffer.
#[derive(Debug)]
pub struct Full;

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn bytes(&mut self, b: &[u8]) -> Result<(), Full> {
        let end = self.len.checked_add(b.len()).ok_or(Full)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(Full)?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    pub fn u32(&mut self, v: u32) -> Result<(), Full> {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> Result<(), Full> {
        self.bytes(&v.to_le_bytes())
    }

    pub fn zeros(&mut self, n: usize) -> Result<(), Full> {
        let end = self.len.checked_add(n).ok_or(Full)?;
        self.buf.get_mut(self.len..end).ok_or(Full)?.fill(0);
        self.len = end;
        Ok(())
    }

    /// `fuse_attr` (88 bytes): ino, size, blocks, atime, mtime, ctime (u64
    /// seconds), atimensec, mtimensec, ctimensec, mode, nlink, uid, gid,
    /// rdev, blksize, flags (u32).
    pub fn attr(&mut self, i: &Inode, blksize: u32) -> Result<(), Full> {
        self.u64(i.ino)?;
        self.u64(i.size)?;
        self.u64(i.size.div_ceil(512))?;
        for t in [i.atime, i.mtime, i.ctime] {
            self.u64(t.sec as u64)?; // the kernel reads it back as signed
        }
        for t in [i.atime, i.mtime, i.ctime] {
            self.u32(t.nsec)?;
        }
        self.u32(i.mode())?;
        self.u32(i.nlink)?;
        self.u32(i.uid)?;
        self.u32(i.gid)?;
        self.u32(i.rdev)?;
        self.u32(blksize)?;
        self.u32(0) // FUSE_ATTR_* flags (submount, DAX): none
    }

    /// `fuse_entry_out` (128 bytes): nodeid, generation, entry_valid,
    /// attr_valid (u64), entry_valid_nsec, attr_valid_nsec (u32), attr.
    pub fn entry(&mut self, i: &Inode, ttl: Ttl) -> Result<(), Full> {
        self.u64(i.ino)?;
        self.u64(0)?; // generation: inode numbers are never reused
        self.u64(ttl.secs)?;
        self.u64(ttl.secs)?;
        self.u32(ttl.nanos)?;
        self.u32(ttl.nanos)?;
        self.attr(i, ttl.blksize)
    }

    /// A `fuse_entry_out` for a name that does not exist: node 0, valid for
    /// the TTL, no attributes.
    pub fn negative_entry(&mut self, ttl: Ttl) -> Result<(), Full> {
        self.u64(0)?; // nodeid 0: negative
        self.u64(0)?;
        self.u64(ttl.secs)?;
        self.u64(0)?;
        self.u32(ttl.nanos)?;
        self.u32(0)?;
        self.zeros(88)
    }

    /// `fuse_attr_out` (104 bytes): attr_valid u64, attr_valid_nsec u32,
    /// dummy u32, attr.
    pub fn attr_out(&mut self, i: &Inode, ttl: Ttl) -> Result<(), Full> {
        self.u64(ttl.secs)?;
        self.u32(ttl.nanos)?;
        self.u32(0)?;
        self.attr(i, ttl.blksize)
    }

    /// `fuse_open_out` (16 bytes): fh u64, open_flags u32, backing_id i32.
    pub fn open_out(&mut self, fh: u64, flags: u32) -> Result<(), Full> {
        self.u64(fh)?;
        self.u32(flags)?;
        self.u32(0)
    }

    /// `fuse_dirent`: ino u64, off u64, namelen u32, type u32, name,
    /// padded to 8 bytes. Returns false (writing nothing) if it does not
    /// fit in `limit` bytes of body.
    pub fn dirent(&mut self, ino: u64, off: u64, kind: Kind, name: &[u8], limit: usize) -> bool {
        let size = dirent_size(name.len());
        if self.len + size > limit.min(self.buf.len()) {
            return false;
        }
        let Ok(namelen) = u32::try_from(name.len()) else {
            return false;
        };
        // Cannot fail: the room was checked above.
        let _ = self.u64(ino);
        let _ = self.u64(off);
        let _ = self.u32(namelen);
        let _ = self.u32(kind.mode_bits() >> 12); // DT_*
        let _ = self.bytes(name);
        let _ = self.zeros(size - 24 - name.len());
        true
    }
}

/// Entry and attribute validity, and the block size to report.
#[derive(Clone, Copy, Debug)]
pub struct Ttl {
    pub secs: u64,
    pub nanos: u32,
    pub blksize: u32,
}

pub const ENTRY_OUT_LEN: usize = 128;

/// Bytes a `fuse_dirent` with a name of `namelen` takes.
pub fn dirent_size(namelen: usize) -> usize {
    (24 + namelen + 7) & !7
}

/// A time from a request: seconds as the kernel's signed 64 bits.
pub fn time(sec: u64, nsec: u32) -> Time {
    Time {
        sec: sec as i64,
        nsec: nsec.min(999_999_999),
    }
}

/// FUSE_NOTIFY_INVAL_INODE with offset -1: the kernel forgets its cached
/// attributes of `ino` (not its pages). Attributes only, so the kernel takes
/// no lock a request in flight may hold: safe from a thread serving a
/// request.
pub fn notify_inval_attrs(fd: std::os::fd::BorrowedFd<'_>, ino: u64) -> std::io::Result<()> {
    notify_inval_inode(fd, ino, -1)
}

/// FUSE_NOTIFY_INVAL_INODE: an out header with unique 0 and the
/// notification's code in the error field, then `fuse_notify_inval_inode_out`:
/// ino u64, off i64, len i64. With `off` 0 and `len` 0 the kernel writes
/// back the inode's dirty pages, then drops its pages and attributes: only
/// from a thread that serves no requests (those writes must be served).
pub fn notify_inval_inode(
    fd: std::os::fd::BorrowedFd<'_>,
    ino: u64,
    off: i64,
) -> std::io::Result<()> {
    const FUSE_NOTIFY_INVAL_INODE: i32 = 2;
    let mut b = Vec::with_capacity(OUT_HEADER_LEN + 24);
    b.extend_from_slice(&((OUT_HEADER_LEN + 24) as u32).to_le_bytes());
    b.extend_from_slice(&FUSE_NOTIFY_INVAL_INODE.to_le_bytes());
    // unique: 0, a notification.
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&ino.to_le_bytes());
    b.extend_from_slice(&off.to_le_bytes());
    b.extend_from_slice(&0i64.to_le_bytes());
    write_notification(fd, &b)
}

/// FUSE_NOTIFY_INVAL_ENTRY: the kernel forgets the entry `name` in
/// directory `parent` (a positive or a negative one). The out header, then
/// `fuse_notify_inval_entry_out`: parent u64, namelen u32, flags u32; then
/// the name and a NUL.
pub fn notify_inval_entry(
    fd: std::os::fd::BorrowedFd<'_>,
    parent: u64,
    name: &[u8],
) -> std::io::Result<()> {
    const FUSE_NOTIFY_INVAL_ENTRY: i32 = 3;
    let len = OUT_HEADER_LEN + 16 + name.len() + 1;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_le_bytes());
    b.extend_from_slice(&FUSE_NOTIFY_INVAL_ENTRY.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&parent.to_le_bytes());
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(name);
    b.push(0);
    write_notification(fd, &b)
}

/// FUSE_NOTIFY_STORE of a file's last byte, `last`, at `size - 1`: the out
/// header, then `fuse_notify_store_out`: nodeid u64, offset u64, size u32,
/// padding u32; then the bytes. The kernel raises its size of `ino` to
/// `size` if it was smaller (never lowers it; a store of no bytes changes
/// nothing), and puts the byte in its page.
pub fn notify_grow(
    fd: std::os::fd::BorrowedFd<'_>,
    ino: u64,
    size: u64,
    last: u8,
) -> std::io::Result<()> {
    const FUSE_NOTIFY_STORE: i32 = 4;
    let Some(at) = size.checked_sub(1) else {
        return Ok(());
    };
    let mut b = Vec::with_capacity(OUT_HEADER_LEN + 25);
    b.extend_from_slice(&((OUT_HEADER_LEN + 25) as u32).to_le_bytes());
    b.extend_from_slice(&FUSE_NOTIFY_STORE.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&ino.to_le_bytes());
    b.extend_from_slice(&at.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.push(last);
    write_notification(fd, &b)
}

/// FUSE_NOTIFY_PRUNE (protocol 7.45, Linux 6.18): the out header, then
/// `fuse_notify_prune_out`: count u32, padding u32, spare u64; then `count`
/// node ids. The kernel drops its unused dentries of each and lets the
/// inode go if nothing else holds it. EINVAL from an older kernel.
pub fn notify_prune(fd: std::os::fd::BorrowedFd<'_>, inodes: &[u64]) -> std::io::Result<()> {
    const FUSE_NOTIFY_PRUNE: i32 = 9;
    let len = OUT_HEADER_LEN + 16 + 8 * inodes.len();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_le_bytes());
    b.extend_from_slice(&FUSE_NOTIFY_PRUNE.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(inodes.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    for ino in inodes {
        b.extend_from_slice(&ino.to_le_bytes());
    }
    write_notification(fd, &b)
}

fn write_notification(fd: std::os::fd::BorrowedFd<'_>, b: &[u8]) -> std::io::Result<()> {
    // SAFETY: the buffer is valid for reads of its length; `fd` is open.
    let n = unsafe {
        libc::write(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            b.as_ptr().cast(),
            b.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode() -> Inode {
        Inode {
            ino: 7,
            kind: Kind::File,
            perm: 0o644,
            nlink: 1,
            uid: 1,
            gid: 2,
            rdev: 0,
            flags: 0,
            size: 1000,
            parent: 1,
            atime: Time { sec: -1, nsec: 5 },
            mtime: Time { sec: 2, nsec: 6 },
            ctime: Time { sec: 3, nsec: 7 },
            crtime: Time { sec: 3, nsec: 7 },
            file_id: 0,
        }
    }

    #[test]
    fn reply_structs_have_the_uapi_sizes() {
        let mut buf = [0u8; 512];
        let ttl = Ttl {
            secs: 1,
            nanos: 0,
            blksize: 4096,
        };
        let mut o = Out::new(&mut buf);
        o.attr(&inode(), 4096).unwrap();
        assert_eq!(o.len(), 88);
        o.clear();
        o.entry(&inode(), ttl).unwrap();
        assert_eq!(o.len(), ENTRY_OUT_LEN);
        o.clear();
        o.negative_entry(ttl).unwrap();
        assert_eq!(o.len(), ENTRY_OUT_LEN);
        o.clear();
        o.attr_out(&inode(), ttl).unwrap();
        assert_eq!(o.len(), 104);
        o.clear();
        o.open_out(1, 2).unwrap();
        assert_eq!(o.len(), 16);
    }

    #[test]
    fn attr_fields_sit_at_their_uapi_offsets() {
        let mut buf = [0u8; 88];
        let mut o = Out::new(&mut buf);
        o.attr(&inode(), 4096).unwrap();
        let u32_at = |off: usize| u32::from_le_bytes(buf[off..off + 4].try_into().unwrap());
        let u64_at = |off: usize| u64::from_le_bytes(buf[off..off + 8].try_into().unwrap());
        assert_eq!(u64_at(0), 7); // ino
        assert_eq!(u64_at(8), 1000); // size
        assert_eq!(u64_at(16), 2); // blocks of 512
        assert_eq!(u64_at(24) as i64, -1); // atime
        assert_eq!(u32_at(48), 5); // atimensec
        assert_eq!(u32_at(60), libc::S_IFREG | 0o644); // mode
        assert_eq!(u32_at(64), 1); // nlink
        assert_eq!(u32_at(68), 1); // uid
        assert_eq!(u32_at(72), 2); // gid
        assert_eq!(u32_at(80), 4096); // blksize
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes_and_respect_the_limit() {
        let mut buf = [0u8; 64];
        let mut o = Out::new(&mut buf);
        assert!(o.dirent(5, 1, Kind::Dir, b"abc", 64));
        assert_eq!(o.len(), 32);
        assert!(!o.dirent(6, 2, Kind::File, b"a-longer-name", 40));
        assert_eq!(o.len(), 32, "an entry that does not fit writes nothing");
        assert_eq!(u32::from_le_bytes(buf[20..24].try_into().unwrap()), 4); // DT_DIR
    }

    #[test]
    fn short_or_malformed_input_is_none_not_a_panic() {
        assert!(InHeader::parse(&[0u8; 39]).is_none());
        let mut a = Args::new(b"abc");
        assert!(a.name().is_none(), "a name without its NUL");
        assert!(a.u64().is_none());
        let mut a = Args::new(b"ab\0cd\0");
        assert_eq!(a.name(), Some(&b"ab"[..]));
        assert_eq!(a.name(), Some(&b"cd"[..]));
        assert!(a.name().is_none());
        let mut small = [0u8; 4];
        let mut o = Out::new(&mut small);
        assert!(o.u64(1).is_err());
        assert!(out_header(&mut [0u8; 8], 1, 0, 0).is_none());
    }
}
