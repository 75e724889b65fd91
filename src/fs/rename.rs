//! rename(2) and renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE: finding
//! and locking the (up to four) inodes involved, POSIX's checks, then the
//! entries and link counts.

use super::*;

/// The inodes a rename changes, read under the locks of all their shards.
struct Parties {
    /// The source's parent and the destination's parent (one inode, read
    /// twice, when they are the same directory).
    sp: Inode,
    dp: Inode,
    /// What moves, and what it replaces or is exchanged with.
    s: Inode,
    d: Option<Inode>,
}

impl Fs {
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        mode: RenameMode,
    ) -> FsResult<()> {
        check_name(name)?;
        check_name(newname)?;
        self.writable(parent)?;
        self.writable(newparent)?;
        if self.is_history_entry(parent, name) || self.is_history_entry(newparent, newname) {
            return err(libc::EROFS);
        }
        for n in [name, newname] {
            if n == b"." || n == b".." {
                return err(libc::EINVAL);
            }
        }
        loop {
            // Find the inodes involved, then lock every shard they live in;
            // if an entry changed in between, start again.
            let (src, dst) = {
                let l = self.lock_many(&[parent, newparent]);
                let snap = self.snap()?;
                let src = match self.dirent_in(l.get(parent), &snap, parent, name)? {
                    Some(e) => e,
                    None => return err(libc::ENOENT),
                };
                let dst = self.dirent_in(l.get(newparent), &snap, newparent, newname)?;
                (src, dst)
            };
            // A directory moving to another parent needs the ancestry of
            // the new parent, which may live in any shard: such a rename
            // locks them all, in order (Linux's per-filesystem rename mutex
            // plays this part). Locking an ancestor's shard later, out of
            // order, deadlocked against the flusher; and with only some
            // shards held, two such renames at once could each pass the
            // check and make a loop.
            let dir_moves = parent != newparent
                && (src.1 == Kind::Dir
                    || (mode == RenameMode::Exchange && dst.is_some_and(|d| d.1 == Kind::Dir)));
            let mut l = if dir_moves {
                self.lock_all()
            } else {
                let mut inos = vec![parent, newparent, src.0];
                if let Some(d) = dst {
                    inos.push(d.0);
                }
                self.lock_many(&inos)
            };
            let snap = self.snap()?;
            if self.dirent_in(l.get(parent), &snap, parent, name)? != Some(src)
                || self.dirent_in(l.get(newparent), &snap, newparent, newname)? != dst
            {
                continue;
            }
            if parent == newparent && name == newname {
                return Ok(());
            }
            if dst.is_some_and(|d| d.0 == src.0) {
                // Two links to one inode: rename does nothing.
                return Ok(());
            }
            let p = self.rename_parties(&l, &snap, parent, newparent, src, dst, mode)?;
            drop(snap);
            set_entries(
                &mut l,
                parent,
                name,
                newparent,
                newname,
                src,
                p.d.as_ref(),
                mode,
            );
            self.set_links(&mut l, parent, newparent, p, mode);
            return Ok(());
        }
    }

    /// Reads the inodes involved and makes POSIX's checks.
    #[allow(clippy::too_many_arguments)]
    fn rename_parties(
        &self,
        l: &Locked<'_>,
        snap: &Snapshot<'_>,
        parent: u64,
        newparent: u64,
        src: (u64, Kind),
        dst: Option<(u64, Kind)>,
        mode: RenameMode,
    ) -> FsResult<Parties> {
        let sp = self.inode_in(l.get(parent), snap, parent)?;
        let dp = self.inode_in(l.get(newparent), snap, newparent)?;
        if dp.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        let s = self.inode_in(l.get(src.0), snap, src.0)?;
        let d = match dst {
            Some(e) => Some(self.inode_in(l.get(e.0), snap, e.0)?),
            None => None,
        };
        match (mode, &d) {
            (RenameMode::NoReplace, Some(_)) => return err(libc::EEXIST),
            (RenameMode::Exchange, None) => return err(libc::ENOENT),
            _ => {}
        }
        // A directory may not move into itself or below itself.
        if s.kind == Kind::Dir
            && parent != newparent
            && self.is_ancestor(l, snap, s.ino, newparent)?
        {
            return err(libc::EINVAL);
        }
        if mode == RenameMode::Exchange
            && let Some(dd) = &d
            && dd.kind == Kind::Dir
            && parent != newparent
            && self.is_ancestor(l, snap, dd.ino, parent)?
        {
            return err(libc::EINVAL);
        }
        if mode != RenameMode::Exchange
            && let Some(dd) = &d
        {
            match (s.kind == Kind::Dir, dd.kind == Kind::Dir) {
                (true, false) => return err(libc::ENOTDIR),
                (false, true) => return err(libc::EISDIR),
                (true, true) if !self.list_in(l.get(dd.ino), snap, dd.ino)?.is_empty() => {
                    return err(libc::ENOTEMPTY);
                }
                _ => {}
            }
        }
        Ok(Parties { sp, dp, s, d })
    }

    /// Link counts (a directory's ".." counts as a link of its parent),
    /// parents, times; a replaced inode loses its link.
    fn set_links(
        &self,
        l: &mut Locked<'_>,
        parent: u64,
        newparent: u64,
        p: Parties,
        mode: RenameMode,
    ) {
        let Parties {
            mut sp,
            mut dp,
            mut s,
            d,
        } = p;
        let now = Time::now();
        let s_dir = s.kind == Kind::Dir;
        let d_dir = d.as_ref().is_some_and(|x| x.kind == Kind::Dir);
        let (mut to_sp, mut to_dp) = (0i64, 0i64);
        if s_dir {
            to_sp -= 1;
            to_dp += 1;
        }
        if d_dir {
            to_dp -= 1;
            if mode == RenameMode::Exchange {
                to_sp += 1;
            }
        }
        if s_dir {
            s.parent = newparent;
        }
        s.changed(now);
        if parent == newparent {
            sp.nlink = (sp.nlink as i64 + to_sp + to_dp).max(0) as u32;
            sp.mtime = now;
            sp.changed(now);
            l.get_mut(parent).delta.inodes.insert(parent, Some(sp));
        } else {
            sp.nlink = (sp.nlink as i64 + to_sp).max(0) as u32;
            dp.nlink = (dp.nlink as i64 + to_dp).max(0) as u32;
            sp.mtime = now;
            sp.changed(now);
            dp.mtime = now;
            dp.changed(now);
            l.get_mut(parent).delta.inodes.insert(parent, Some(sp));
            l.get_mut(newparent)
                .delta
                .inodes
                .insert(newparent, Some(dp));
        }
        if let Some(mut dd) = d {
            dd.changed(now);
            if mode == RenameMode::Exchange {
                if dd.kind == Kind::Dir {
                    dd.parent = parent;
                }
                l.get_mut(dd.ino).delta.inodes.insert(dd.ino, Some(dd));
            } else {
                if dd.kind == Kind::Dir {
                    dd.nlink = 0;
                } else {
                    dd.nlink = dd.nlink.saturating_sub(1);
                }
                self.drop_link(l.get_mut(dd.ino), dd);
            }
        }
        l.get_mut(s.ino).delta.inodes.insert(s.ino, Some(s));
    }

    /// Whether `dir` is `of` or one of its ancestors (following parents from `of`).
    pub(super) fn is_ancestor(
        &self,
        l: &Locked<'_>,
        snap: &Snapshot<'_>,
        dir: u64,
        of: u64,
    ) -> FsResult<bool> {
        let mut cur = of;
        for _ in 0..4096 {
            if cur == dir {
                return Ok(true);
            }
            if cur == ROOT {
                return Ok(false);
            }
            // Every shard is held here (see `rename`); taking one now would
            // be out of order.
            let Some(sh) = l.try_get(cur) else {
                return Err(FsError::Corrupt(format!(
                    "rename: the shard of ancestor {cur} is not locked"
                )));
            };
            cur = self.inode_in(sh, snap, cur)?.parent;
        }
        err(libc::ELOOP)
    }
}

/// The source's name goes (or, exchanging, names the destination's
/// inode) and the destination's names the source's inode.
#[allow(clippy::too_many_arguments)]
fn set_entries(
    l: &mut Locked<'_>,
    parent: u64,
    name: &[u8],
    newparent: u64,
    newname: &[u8],
    src: (u64, Kind),
    d: Option<&Inode>,
    mode: RenameMode,
) {
    let old = match (mode, d) {
        (RenameMode::Exchange, Some(d)) => Some((d.ino, d.kind)),
        _ => None,
    };
    l.get_mut(parent)
        .delta
        .dirents
        .entry(parent)
        .or_default()
        .insert(name.to_vec(), old);
    l.get_mut(newparent)
        .delta
        .dirents
        .entry(newparent)
        .or_default()
        .insert(newname.to_vec(), Some(src));
}
