//! Inodes and the keys the filesystem keeps in the store.
//!
//! ## Keys (all integers big-endian, so keys sort by inode, then block)
//!
//! ```text
//! I ino                 inode record (below)
//! D parent name         directory entry: child ino u64 LE, kind u8
//! B ino block           file block: BLAKE3 of its bytes (32), then the bytes
//!                       themselves if small, else the entry's extent holds them
//! X ino name            extended attribute value
//! S ino                 symlink target
//! O ino                 orphan: unlinked while open; deleted at the next mount
//! F file-id             a file made by another peer (sync): its inode u64 LE
//!                       (a file made here has the id `fs id << 64 | ino`)
//! M                     filesystem record: next inode number u64, block size u32
//! ```
//!
//! ## Inode record (little-endian, 104 bytes)
//!
//! ```text
//! off size field
//!   0    1 record version (1)
//!   1    1 kind: 1 file, 2 directory, 3 symlink, 4 fifo, 5 socket, 6 char device, 7 block device
//!   2    2 permission bits (mode & 0o7777)
//!   4    4 link count
//!   8    4 uid
//!  12    4 gid
//!  16    4 rdev
//!  20    4 flags
//!  24    8 size in bytes
//!  32    8 parent inode (directories; 0 otherwise)
//!  40   12 atime: seconds i64, nanoseconds u32
//!  52   12 mtime
//!  64   12 ctime
//!  76   12 crtime (birth)
//!  88   16 file id: stable 128-bit identity, for sync to follow renames
//! ```

use crate::fs::error::{FsError, FsResult};

pub const ROOT: u64 = 1;
pub const NAME_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Socket => 5,
            Kind::CharDev => 6,
            Kind::BlockDev => 7,
        }
    }

    pub fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Socket,
            6 => Kind::CharDev,
            7 => Kind::BlockDev,
            _ => return None,
        })
    }

    /// The `S_IF*` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }

    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// A point in time: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    /// The later of `self` and a nanosecond after `prev`.
    fn after(self, prev: Time) -> Time {
        if (self.sec, self.nsec) > (prev.sec, prev.nsec) {
            return self;
        }
        if prev.nsec + 1 < 1_000_000_000 {
            Time {
                sec: prev.sec,
                nsec: prev.nsec + 1,
            }
        } else {
            Time {
                sec: prev.sec + 1,
                nsec: 0,
            }
        }
    }

    /// The clock the kernel stamps files with itself (with the writeback
    /// cache it sets `mtime` and `ctime` of writes): one clock for both,
    /// so a later operation never shows an earlier time than an earlier
    /// one. That clock is the coarse wall clock, raised since Linux 6.13 to
    /// the "multigrain floor": the latest fine-grained stamp a filesystem
    /// such as ext4 or tmpfs handed out, which user space cannot read. So
    /// the daemon takes its time the same way: it sets the times of a
    /// memfd (tmpfs) whose ctime it has just read, which the kernel answers
    /// with a fine-grained stamp and raises the floor to it. Every stamp
    /// the kernel gave before is at most that, every one it gives after at
    /// least. (Before 6.13 the memfd is stamped with the coarse clock.)
    /// Falls back to the coarse clock.
    pub fn now() -> Time {
        let coarse = coarse_now();
        KERNEL_CLOCK.with(|p| {
            p.as_ref()
                .and_then(|p| p.stamp())
                .map_or(coarse, |k| k.max(coarse))
        })
    }
}

/// The coarse wall clock (`CLOCK_REALTIME_COARSE`).
fn coarse_now() -> Time {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        };
    }
    Time {
        sec: ts.tv_sec,
        nsec: ts.tv_nsec as u32,
    }
}

thread_local! {
    static KERNEL_CLOCK: Option<MemfdClock> = MemfdClock::new();
}

/// A memfd whose times the daemon sets to take the kernel's time (see
/// [`Time::now`]).
struct MemfdClock(std::os::fd::OwnedFd);

impl MemfdClock {
    fn new() -> Option<MemfdClock> {
        use std::os::fd::FromRawFd;
        // SAFETY: a NUL-terminated name and flags; returns a new descriptor.
        let fd = unsafe { libc::memfd_create(c"zippyfs-clock".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: memfd_create returned a new descriptor nothing else owns.
        let clock = MemfdClock(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        // Reading the ctime marks it queried, so the next change of the
        // times is stamped fine-grained (each `stamp` ends with a read).
        clock.stat()?;
        Some(clock)
    }

    fn stat(&self) -> Option<libc::stat> {
        use std::os::fd::AsRawFd;
        // SAFETY: `stat` is a plain C struct of integers: all-zero is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and out-pointer.
        (unsafe { libc::fstat(self.0.as_raw_fd(), &mut st) } == 0).then_some(st)
    }

    /// The kernel's time now: set the times to now (fine-grained, as the
    /// last read marked the ctime queried), read them back.
    fn stamp(&self) -> Option<Time> {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor; a null `times` means "now" for both.
        if unsafe { libc::futimens(self.0.as_raw_fd(), std::ptr::null()) } != 0 {
            return None;
        }
        let st = self.stat()?;
        Some(Time {
            sec: st.st_mtime,
            nsec: st.st_mtime_nsec as u32,
        })
    }
}

impl Inode {
    /// Records a change to the inode at `now`: its ctime moves to `now`,
    /// and at least a nanosecond past what it was, so two changes within
    /// one tick of the coarse clock still differ (what `zippyfs diff` and
    /// `log`, like backup tools, tell changes by).
    pub fn changed(&mut self, now: Time) {
        self.ctime = now.after(self.ctime);
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub flags: u32,
    pub size: u64,
    pub parent: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    pub file_id: u128,
}

const RECORD_VERSION: u8 = 1;
const RECORD_LEN: usize = 104;

impl Inode {
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | self.perm as u32
    }

    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0] = RECORD_VERSION;
        b[1] = self.kind.code();
        b[2..4].copy_from_slice(&self.perm.to_le_bytes());
        b[4..8].copy_from_slice(&self.nlink.to_le_bytes());
        b[8..12].copy_from_slice(&self.uid.to_le_bytes());
        b[12..16].copy_from_slice(&self.gid.to_le_bytes());
        b[16..20].copy_from_slice(&self.rdev.to_le_bytes());
        b[20..24].copy_from_slice(&self.flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.size.to_le_bytes());
        b[32..40].copy_from_slice(&self.parent.to_le_bytes());
        for (at, t) in [
            (40, self.atime),
            (52, self.mtime),
            (64, self.ctime),
            (76, self.crtime),
        ] {
            b[at..at + 8].copy_from_slice(&t.sec.to_le_bytes());
            b[at + 8..at + 12].copy_from_slice(&t.nsec.to_le_bytes());
        }
        b[88..104].copy_from_slice(&self.file_id.to_le_bytes());
        b
    }

    pub fn decode(ino: u64, b: &[u8]) -> FsResult<Inode> {
        let bad = || FsError::Errno(libc::EIO);
        if b.len() < RECORD_LEN || b[0] != RECORD_VERSION {
            tracing::error!(ino, "inode record malformed");
            return Err(bad());
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        let time_at = |at: usize| Time {
            sec: u64_at(at) as i64,
            nsec: u32_at(at + 8),
        };
        Ok(Inode {
            ino,
            kind: Kind::from_code(b[1]).ok_or_else(bad)?,
            perm: u16::from_le_bytes([b[2], b[3]]),
            nlink: u32_at(4),
            uid: u32_at(8),
            gid: u32_at(12),
            rdev: u32_at(16),
            flags: u32_at(20),
            size: u64_at(24),
            parent: u64_at(32),
            atime: time_at(40),
            mtime: time_at(52),
            ctime: time_at(64),
            crtime: time_at(76),
            file_id: u128::from_le_bytes(b[88..104].try_into().unwrap_or_default()),
        })
    }
}

pub fn inode_key(ino: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'I';
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

/// The first byte of every directory entry's key.
pub const DIRENT: u8 = b'D';

pub fn dirent_prefix(parent: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = DIRENT;
    k[1..].copy_from_slice(&parent.to_be_bytes());
    k
}

pub fn dirent_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + name.len());
    k.extend_from_slice(&dirent_prefix(parent));
    k.extend_from_slice(name);
    k
}

pub fn block_prefix(ino: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'B';
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

pub fn block_key(ino: u64, block: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&block_prefix(ino));
    k[9..].copy_from_slice(&block.to_be_bytes());
    k
}

pub fn xattr_prefix(ino: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'X';
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

pub fn xattr_key(ino: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + name.len());
    k.extend_from_slice(&xattr_prefix(ino));
    k.extend_from_slice(name);
    k
}

pub fn symlink_key(ino: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'S';
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

pub fn orphan_key(ino: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'O';
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

pub fn file_id_key(fid: u128) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'F';
    k[1..].copy_from_slice(&fid.to_be_bytes());
    k
}

pub const META_KEY: &[u8] = b"M";

/// The exclusive upper bound of all keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_record_round_trips() {
        let i = Inode {
            ino: 42,
            kind: Kind::Dir,
            perm: 0o1755,
            nlink: 3,
            uid: 1000,
            gid: 100,
            rdev: 0,
            flags: 0,
            size: 4096,
            parent: 1,
            atime: Time { sec: -5, nsec: 7 },
            mtime: Time {
                sec: 1_900_000_000,
                nsec: 999_999_999,
            },
            ctime: Time::now(),
            crtime: Time::default(),
            file_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        };
        assert_eq!(Inode::decode(42, &i.encode()).unwrap(), i);
        assert!(Inode::decode(42, &[0u8; 10]).is_err());
    }

    #[test]
    fn keys_sort_by_inode_then_block() {
        assert!(block_key(1, 2) < block_key(1, 10));
        assert!(block_key(1, u64::MAX) < block_key(2, 0));
        assert!(dirent_key(5, b"zz").as_slice() < prefix_end(&dirent_prefix(5)).as_slice());
        assert_eq!(prefix_end(b"D\x00\xff"), b"D\x01".to_vec());
    }
}
