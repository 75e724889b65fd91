//! Old versions, read-only, inside the filesystem: `/<name>/versions/<id>/...`
//! (`name` is `.zippy` unless configured) is the whole tree as version `id`
//! left it, the way ZFS shows `.zfs/snapshot`. Nothing is copied: a view
//! reads the version's tree in the store.
//!
//! ## Inode numbers
//!
//! The history directory and its `versions` directory have fixed numbers at
//! the top of the range. A file `ino` seen in version `v` is
//! `2^63 | v << 36 | ino`: versions up to 2^27 and inodes up to 2^36 can be
//! shown, anything beyond gives `EOVERFLOW`. Real inode numbers never reach
//! 2^63.
//!
//! The history directory is not listed by the root's `readdir`; nothing in
//! it can be written, renamed or removed (`EROFS`), and a name equal to it
//! cannot be created in the root (`EEXIST`).

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::fs::error::{FsError, FsResult, err};
use crate::fs::inode::*;
use crate::fs::{DirEntry, Fs, dot_entries, read_blocks, slice_of};
use crate::store::{Snapshot, StoreError};

/// Where a version's changes came from, kept with the version (its tag
/// in the store). `peer` is 0 for this mount's own writes, else the sync
/// peer whose change-set the version applied; `seq` is the last server
/// sequence the store had applied when the version was made: the base of
/// this mount's own changes in it, or the sequence it applied.
///
/// ```text
/// off size field
///   0    1 format (1)
///   1    4 peer, u32 LE
///   5    8 seq, u64 LE
/// ```
/// A store that never synced writes no tag (a version without one is
/// `Origin::default()`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub peer: u32,
    pub seq: u64,
}

impl Origin {
    /// The `peer` of a version that applied change-sets of several peers
    /// (or the server's snapshot of the volume).
    pub const SEVERAL: u32 = u32::MAX;

    pub fn tag(&self) -> Vec<u8> {
        if *self == Origin::default() {
            return Vec::new();
        }
        let mut t = vec![1u8];
        t.extend_from_slice(&self.peer.to_le_bytes());
        t.extend_from_slice(&self.seq.to_le_bytes());
        t
    }

    /// What a commit that only frees space or changes the policy (gc,
    /// retention, letting go on a full disk, offline or mounted) records:
    /// this mount's own, built on the sequence the newest tagged version
    /// recorded. So the newest version always says how far sync had
    /// applied, which the peer's journal replay relies on (an untagged
    /// version on top read as "nothing applied" and stopped it short).
    pub fn carried(store: &crate::store::Store) -> Origin {
        Origin::carried_in(&store.versions())
    }

    /// [`Origin::carried`] of a store's versions, oldest first.
    pub fn carried_in(versions: &[crate::store::VersionInfo]) -> Origin {
        let seq = versions
            .iter()
            .rev()
            .map(|v| Origin::of_tag(&v.tag))
            .find(|o| *o != Origin::default())
            .map_or(0, |o| o.seq);
        Origin { peer: 0, seq }
    }

    /// The origin a tag records; a tag of another format reads as none.
    pub fn of_tag(t: &[u8]) -> Origin {
        match (t.first(), t.get(1..5), t.get(5..13)) {
            (Some(1), Some(p), Some(s)) => Origin {
                peer: p.try_into().map_or(0, u32::from_le_bytes),
                seq: s.try_into().map_or(0, u64::from_le_bytes),
            },
            _ => Origin::default(),
        }
    }
}

pub const HISTORY_DIR: u64 = u64::MAX - 1;
pub const VERSIONS_DIR: u64 = u64::MAX - 2;
/// `versions.json`: the kept versions, generated when read (so the kernel
/// must not cache it: see [`Fs::is_generated`]).
pub const VERSIONS_FILE: u64 = u64::MAX - 3;
const VERSIONS_FILE_NAME: &[u8] = b"versions.json";
/// `daemon.json`: the serving daemon's status ([`Fs::status`]), for humans
/// and scripts (commands ask the daemon through its control socket).
pub const DAEMON_FILE: u64 = u64::MAX - 4;
const DAEMON_FILE_NAME: &[u8] = b"daemon.json";
const VIEW_BIT: u64 = 1 << 63;
const INO_BITS: u32 = 36;
/// The most inode numbers a filesystem hands out: the views must encode them.
pub(crate) const MAX_INO: u64 = 1 << INO_BITS;
// One less than 2^27, so that view numbers stay below the fixed ones at the top.
const VERSION_LIMIT: u64 = (1 << 27) - 1;

/// Whether an inode number belongs to the history tree.
pub fn is_history(ino: u64) -> bool {
    ino & VIEW_BIT != 0
}

fn view_ino(version: u64, ino: u64) -> FsResult<u64> {
    if version >= VERSION_LIMIT || ino >= 1 << INO_BITS {
        return err(libc::EOVERFLOW);
    }
    Ok(VIEW_BIT | version << INO_BITS | ino)
}

/// The live inode number behind `ino`: itself for a live inode, the inode a
/// version view's entry shows for one in `.zippy/versions` (so that tools
/// can follow one file across versions by `stat`).
pub fn live_ino(ino: u64) -> u64 {
    ino & ((1 << INO_BITS) - 1)
}

/// (version, inode) of a view inode number.
fn split(vino: u64) -> Option<(u64, u64)> {
    if !is_history(vino) || vino >= DAEMON_FILE {
        return None;
    }
    let rest = vino & !VIEW_BIT;
    Some((rest >> INO_BITS, live_ino(rest)))
}

// ---- reading a committed version (no uncommitted changes) ----

pub(crate) fn inode_at(snap: &Snapshot<'_>, ino: u64) -> FsResult<Option<Inode>> {
    match snap.get(&inode_key(ino))? {
        Some(b) => Ok(Some(Inode::decode(ino, b)?)),
        None => Ok(None),
    }
}

fn decode_dirent(b: &[u8]) -> FsResult<(u64, Kind)> {
    if b.len() < 9 {
        return err(libc::EIO);
    }
    let ino = u64::from_le_bytes(b[0..8].try_into().unwrap_or_default());
    let kind = Kind::from_code(b[8]).ok_or(FsError::Errno(libc::EIO))?;
    Ok((ino, kind))
}

pub(crate) fn dirent_at(
    snap: &Snapshot<'_>,
    parent: u64,
    name: &[u8],
) -> FsResult<Option<(u64, Kind)>> {
    match snap.get(&dirent_key(parent, name))? {
        Some(b) => Ok(Some(decode_dirent(b)?)),
        None => Ok(None),
    }
}

pub(crate) fn list_at(snap: &Snapshot<'_>, dir: u64) -> FsResult<BTreeMap<Vec<u8>, (u64, Kind)>> {
    let mut out = BTreeMap::new();
    let start = dirent_prefix(dir);
    let end = prefix_end(&start);
    for item in snap.range((Bound::Included(&start[..]), Bound::Excluded(&end[..])))? {
        let (k, e) = item?;
        out.insert(k[9..].to_vec(), decode_dirent(e.value)?);
    }
    Ok(out)
}

/// A committed block's bytes (empty for a hole).
pub(crate) fn block_at<'a>(snap: &Snapshot<'a>, ino: u64, idx: u64) -> FsResult<&'a [u8]> {
    match snap.get_entry(&block_key(ino, idx))? {
        None => Ok(&[]),
        Some(e) => match e.extent {
            Some(x) => Ok(snap.read_extent(&x)?),
            None => Ok(e.value.get(32..).unwrap_or(&[])),
        },
    }
}

impl Fs {
    pub(crate) fn history_name(&self) -> &[u8] {
        self.opts.history_name.as_bytes()
    }

    /// Whether (`parent`, `name`) names the history directory.
    pub(crate) fn is_history_entry(&self, parent: u64, name: &[u8]) -> bool {
        parent == ROOT && name == self.history_name()
    }

    /// A version by id, or by time (RFC 3339 UTC, or `@SECONDS`): the newest
    /// version at or before it.
    fn version_named(&self, name: &[u8]) -> Option<u64> {
        let name = std::str::from_utf8(name).ok()?;
        if let Ok(id) = name.parse::<u64>() {
            return Some(id);
        }
        let ns = parse_time(name)?;
        self.store
            .versions()
            .iter()
            .filter(|v| (v.time as i64) <= ns)
            .map(|v| v.id)
            .max()
    }

    fn version_snapshot(&self, v: u64) -> FsResult<Snapshot<'_>> {
        match self.store.snapshot(v) {
            Ok(s) => Ok(s),
            // Retention let it go (or it never was).
            Err(StoreError::NoSuchVersion(_)) => err(libc::ENOENT),
            Err(e) => Err(e.into()),
        }
    }

    fn fixed_dir(&self, ino: u64, parent: u64, nlink: u32) -> FsResult<Inode> {
        let time = self
            .store
            .versions()
            .last()
            .map(|v| Time {
                sec: (v.time / 1_000_000_000) as i64,
                nsec: (v.time % 1_000_000_000) as u32,
            })
            .unwrap_or_default();
        Ok(Inode {
            ino,
            kind: Kind::Dir,
            perm: 0o555,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            size: 0,
            parent,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            file_id: 0,
        })
    }

    /// An inode of version `v`, numbered for the view.
    fn view_inode(&self, snap: &Snapshot<'_>, v: u64, ino: u64) -> FsResult<Inode> {
        let mut i = inode_at(snap, ino)?.ok_or(FsError::Errno(libc::ENOENT))?;
        i.ino = view_ino(v, ino)?;
        if i.kind == Kind::Dir {
            i.parent = if ino == ROOT {
                VERSIONS_DIR
            } else {
                view_ino(v, i.parent)?
            };
        }
        Ok(i)
    }

    /// Whether a file's contents are made when read (the kernel must not
    /// cache them).
    pub fn is_generated(&self, ino: u64) -> bool {
        ino == VERSIONS_FILE || ino == DAEMON_FILE
    }

    /// `daemon.json`: [`Fs::status`] on one line.
    pub(crate) fn daemon_json(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec(&self.status()).unwrap_or_default();
        text.push(b'\n');
        text
    }

    /// A generated file's text as of now.
    pub(crate) fn generated(&self, ino: u64) -> Option<Vec<u8>> {
        match ino {
            VERSIONS_FILE => Some(self.versions_json()),
            DAEMON_FILE => Some(self.daemon_json()),
            _ => None,
        }
    }

    /// The kept versions as JSON: an array of objects with `id`, `time`
    /// (UTC, RFC 3339), `time_ns` (unix nanoseconds), `cause`, `changes`
    /// (keys put or deleted), `bytes` (data written), and where its changes
    /// came from ([`Origin`]): `origin` (0: made here, else the sync
    /// peer's id) and `synced` (the server sequence it was based on).
    pub fn versions_json(&self) -> Vec<u8> {
        versions_json(&self.store)
    }

    pub(crate) fn history_getattr(&self, ino: u64) -> FsResult<Inode> {
        match ino {
            VERSIONS_FILE | DAEMON_FILE => {
                let mut i = self.fixed_dir(ino, HISTORY_DIR, 1)?;
                i.kind = Kind::File;
                i.perm = 0o444;
                i.size = self.generated(ino).map_or(0, |g| g.len() as u64);
                Ok(i)
            }
            HISTORY_DIR => self.fixed_dir(HISTORY_DIR, ROOT, 3),
            VERSIONS_DIR => {
                let n = self.store.versions().len() as u32;
                self.fixed_dir(VERSIONS_DIR, HISTORY_DIR, 2 + n)
            }
            _ => {
                let (v, real) = split(ino).ok_or(FsError::Errno(libc::ENOENT))?;
                self.view_inode(&self.version_snapshot(v)?, v, real)
            }
        }
    }

    pub(crate) fn history_lookup(&self, parent: u64, name: &[u8]) -> FsResult<Inode> {
        match parent {
            HISTORY_DIR => match name {
                b"." => self.history_getattr(HISTORY_DIR),
                b".." => self.getattr(ROOT),
                b"versions" => self.history_getattr(VERSIONS_DIR),
                VERSIONS_FILE_NAME => self.history_getattr(VERSIONS_FILE),
                DAEMON_FILE_NAME => self.history_getattr(DAEMON_FILE),
                _ => err(libc::ENOENT),
            },
            VERSIONS_DIR => match name {
                b"." => self.history_getattr(VERSIONS_DIR),
                b".." => self.history_getattr(HISTORY_DIR),
                _ => {
                    let v = self
                        .version_named(name)
                        .ok_or(FsError::Errno(libc::ENOENT))?;
                    self.view_inode(&self.version_snapshot(v)?, v, ROOT)
                }
            },
            _ => {
                let (v, dir) = split(parent).ok_or(FsError::Errno(libc::ENOENT))?;
                let snap = self.version_snapshot(v)?;
                let d = self.view_inode(&snap, v, dir)?;
                if d.kind != Kind::Dir {
                    return err(libc::ENOTDIR);
                }
                match name {
                    b"." => Ok(d),
                    b".." => self.history_getattr(d.parent),
                    _ => match dirent_at(&snap, dir, name)? {
                        Some((child, _)) => self.view_inode(&snap, v, child),
                        None => err(libc::ENOENT),
                    },
                }
            }
        }
    }

    pub(crate) fn history_listing(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let me = self.history_getattr(ino)?;
        if me.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        let mut out = dot_entries(ino, me.parent);
        match ino {
            HISTORY_DIR => {
                out.push(DirEntry {
                    name: b"versions".to_vec(),
                    ino: VERSIONS_DIR,
                    kind: Kind::Dir,
                });
                for (name, ino) in [
                    (VERSIONS_FILE_NAME, VERSIONS_FILE),
                    (DAEMON_FILE_NAME, DAEMON_FILE),
                ] {
                    out.push(DirEntry {
                        name: name.to_vec(),
                        ino,
                        kind: Kind::File,
                    });
                }
            }
            VERSIONS_DIR => {
                for v in self.store.versions() {
                    if let Ok(vino) = view_ino(v.id, ROOT) {
                        out.push(DirEntry {
                            name: v.id.to_string().into_bytes(),
                            ino: vino,
                            kind: Kind::Dir,
                        });
                    }
                }
            }
            _ => {
                let (v, dir) = split(ino).ok_or(FsError::Errno(libc::ENOENT))?;
                let snap = self.version_snapshot(v)?;
                for (name, (child, kind)) in list_at(&snap, dir)? {
                    out.push(DirEntry {
                        name,
                        ino: view_ino(v, child)?,
                        kind,
                    });
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn history_read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if let Some(all) = self.generated(ino) {
            return Ok(slice_of(&all, offset, size).to_vec());
        }
        let (v, real) = split(ino).ok_or(FsError::Errno(libc::EISDIR))?;
        let snap = self.version_snapshot(v)?;
        let i = inode_at(&snap, real)?.ok_or(FsError::Errno(libc::ENOENT))?;
        if i.kind == Kind::Dir {
            return err(libc::EISDIR);
        }
        read_blocks(i.size, self.block_size, offset, size, |idx| {
            block_at(&snap, real, idx)
        })
    }

    pub(crate) fn history_readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (v, real) = split(ino).ok_or(FsError::Errno(libc::EINVAL))?;
        let snap = self.version_snapshot(v)?;
        match snap.get(&symlink_key(real))? {
            Some(t) => Ok(t.to_vec()),
            None => err(libc::EINVAL),
        }
    }

    pub(crate) fn history_getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        let (v, real) = split(ino).ok_or(FsError::Errno(libc::ENODATA))?;
        let snap = self.version_snapshot(v)?;
        match snap.get(&xattr_key(real, name))? {
            Some(x) => Ok(x.to_vec()),
            None => err(libc::ENODATA),
        }
    }

    pub(crate) fn history_listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        let Some((v, real)) = split(ino) else {
            return Ok(Vec::new());
        };
        let snap = self.version_snapshot(v)?;
        let start = xattr_prefix(real);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        for item in snap.range((Bound::Included(&start[..]), Bound::Excluded(&end[..])))? {
            out.push(item?.0[9..].to_vec());
        }
        Ok(out)
    }
}

/// The kept versions of a store as JSON (what `versions.json` holds).
pub fn versions_json(store: &crate::store::Store) -> Vec<u8> {
    let mut out = String::from("[\n");
    let versions = store.versions();
    for (i, v) in versions.iter().enumerate() {
        let o = Origin::of_tag(&v.tag);
        out.push_str(&format!(
            "  {{\"id\": {}, \"time\": \"{}\", \"time_ns\": {}, \"cause\": \"{}\", \"changes\": {}, \"bytes\": {}, \"origin\": {}, \"synced\": {}}}{}\n",
            v.id,
            rfc3339(v.time),
            v.time,
            json_escape(&v.cause),
            v.changes,
            v.bytes,
            o.peer,
            o.seq,
            if i + 1 < versions.len() { "," } else { "" }
        ));
    }
    out.push_str("]\n");
    out.into_bytes()
}

/// Nanoseconds since the epoch of an RFC 3339 UTC time
/// (`2026-11-26T07:53:26.123Z`, fraction optional) or of `@SECONDS`.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Some(secs) = s.strip_prefix('@') {
        return secs.parse::<i64>().ok()?.checked_mul(1_000_000_000);
    }
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once('T').or_else(|| s.split_once(' '))?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (time, frac) = time.split_once('.').unwrap_or((time, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = format!("{frac:0<9}").parse().ok()?;
    let mut t = time.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000 + nanos)
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Unix nanoseconds as RFC 3339 UTC with nanoseconds.
pub(crate) fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ns % 1_000_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_escape("a\"b\\c\nd"), "a\\\"b\\\\c\\u000ad");
    }
}
