//! Names: lookup, making and removing entries (files, directories, device
//! nodes, symlinks, hard links) and directory listings; rename is in
//! `rename.rs`.

use super::*;

impl Fs {
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Inode> {
        check_name(name)?;
        if is_history(parent) {
            return self.history_lookup(parent, name);
        }
        if self.is_history_entry(parent, name) {
            return self.history_getattr(HISTORY_DIR);
        }
        // `.` of any inode is the inode itself: the kernel asks for it to
        // turn a file handle back into an inode (NFS export,
        // `open_by_handle_at`) when it no longer has the inode cached.
        if name == b"." {
            return self.getattr(parent);
        }
        let ino = {
            let sh = self.shard(parent);
            let snap = self.snap()?;
            let dir = self.inode_in(&sh, &snap, parent)?;
            if dir.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
            if name == b".." {
                dir.parent
            } else {
                match self.dirent_in(&sh, &snap, parent, name)? {
                    Some((ino, _)) => ino,
                    None => return err(libc::ENOENT),
                }
            }
        };
        self.getattr(ino)
    }

    pub(super) fn new_inode(
        &self,
        ino: u64,
        ctx: Ctx,
        parent: &Inode,
        kind: Kind,
        perm: u32,
        rdev: u32,
    ) -> Inode {
        let now = Time::now();
        let mut perm = (perm & 0o7777) as u16;
        // BSD group semantics under a set-group-ID directory.
        let gid = if parent.perm & libc::S_ISGID as u16 != 0 {
            if kind == Kind::Dir {
                perm |= libc::S_ISGID as u16;
            }
            parent.gid
        } else {
            ctx.gid
        };
        Inode {
            ino,
            kind,
            perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: ctx.uid,
            gid,
            rdev,
            flags: 0,
            size: 0,
            parent: if kind == Kind::Dir { parent.ino } else { 0 },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            file_id: self.file_id(ino),
        }
    }

    /// Creates a node of any kind in `parent` (the common part of mknod,
    /// mkdir, symlink and create).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn make(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        kind: Kind,
        perm: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> FsResult<Inode> {
        check_name(name)?;
        self.writable(parent)?;
        if name == b"." || name == b".." || self.is_history_entry(parent, name) {
            return err(libc::EEXIST);
        }
        // The new inode's number decides its shard: take the number first
        // so both shards are locked together, in order (a number lost to an
        // error is never reused, which is harmless).
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let mut l = self.lock_many(&[parent, ino]);
        let snap = self.snap()?;
        let mut dir = self.inode_in(l.get(parent), &snap, parent)?;
        if dir.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        if dir.nlink == 0 {
            return err(libc::ENOENT);
        }
        if self
            .dirent_in(l.get(parent), &snap, parent, name)?
            .is_some()
        {
            return err(libc::EEXIST);
        }
        let default_acl = match kind {
            Kind::Symlink => None,
            _ => self
                .xattr_in(l.get(parent), &snap, parent, acl::DEFAULT)?
                .and_then(|d| acl::Acl::parse(&d)),
        };
        drop(snap);
        let mut inode = self.new_inode(ino, ctx, &dir, kind, perm, rdev);
        let mut acls: Vec<(&[u8], Vec<u8>)> = Vec::new();
        match &default_acl {
            // The directory's default ACL decides, not the umask: the new
            // inode's access ACL and permission bits narrow each other,
            // and a directory inherits the default ACL itself.
            Some(d) => {
                let (access, mode) = d.create(inode.perm & 0o777);
                inode.perm = (inode.perm & !0o777) | mode;
                if !access.is_mode() {
                    acls.push((acl::ACCESS, access.encode()));
                }
                if kind == Kind::Dir {
                    acls.push((acl::DEFAULT, d.encode()));
                }
            }
            None if kind != Kind::Symlink => inode.perm &= !(ctx.umask as u16 & 0o777),
            None => {}
        }
        let now = inode.ctime;
        dir.mtime = now;
        dir.changed(now);
        if kind == Kind::Dir {
            dir.nlink += 1;
        }
        let dsh = l.get_mut(parent);
        dsh.delta
            .dirents
            .entry(parent)
            .or_default()
            .insert(name.to_vec(), Some((ino, kind)));
        dsh.delta.inodes.insert(parent, Some(dir));
        let sh = l.get_mut(ino);
        if let Some(t) = target {
            inode.size = t.len() as u64;
            sh.delta.symlinks.insert(ino, t.to_vec());
        }
        for (name, value) in acls {
            sh.delta.xattrs.insert((ino, name.to_vec()), Some(value));
        }
        sh.delta.inodes.insert(ino, Some(inode.clone()));
        Ok(inode)
    }

    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<Inode> {
        let kind = Kind::from_mode(mode).ok_or(FsError::Errno(libc::EINVAL))?;
        if kind == Kind::Dir || kind == Kind::Symlink {
            return err(libc::EINVAL);
        }
        self.make(ctx, parent, name, kind, mode, rdev, None)
    }

    pub fn mkdir(&self, ctx: Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<Inode> {
        self.make(ctx, parent, name, Kind::Dir, mode, 0, None)
    }

    pub fn symlink(&self, ctx: Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Inode> {
        if target.len() > 4095 {
            return err(libc::ENAMETOOLONG);
        }
        self.make(ctx, parent, name, Kind::Symlink, 0o777, 0, Some(target))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        if is_history(ino) {
            return self.history_readlink(ino);
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        let i = self.inode_in(&sh, &snap, ino)?;
        if i.kind != Kind::Symlink {
            return err(libc::EINVAL);
        }
        for d in [Some(&sh.delta), sh.committing.as_deref()]
            .into_iter()
            .flatten()
        {
            if let Some(t) = d.symlinks.get(&ino) {
                return Ok(t.clone());
            }
        }
        match snap.get(&symlink_key(ino))? {
            Some(t) => Ok(t.to_vec()),
            None => err(libc::EIO),
        }
    }

    /// Creates and opens a regular file.
    pub fn create(&self, ctx: Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<(Inode, u64)> {
        let i = self.make(ctx, parent, name, Kind::File, mode, 0, None)?;
        let fh = self.open(i.ino, true)?;
        Ok((i, fh))
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    pub(super) fn remove(&self, parent: u64, name: &[u8], dir: bool) -> FsResult<()> {
        check_name(name)?;
        self.writable(parent)?;
        if self.is_history_entry(parent, name) {
            return err(libc::EROFS);
        }
        if name == b"." {
            return err(libc::EINVAL);
        }
        if name == b".." {
            return err(libc::ENOTEMPTY);
        }
        loop {
            let child = {
                let sh = self.shard(parent);
                let snap = self.snap()?;
                match self.dirent_in(&sh, &snap, parent, name)? {
                    Some((c, _)) => c,
                    None => return err(libc::ENOENT),
                }
            };
            let mut l = self.lock_many(&[parent, child]);
            let snap = self.snap()?;
            // The entry may have changed between the two locks: look again.
            if self
                .dirent_in(l.get(parent), &snap, parent, name)?
                .map(|e| e.0)
                != Some(child)
            {
                continue;
            }
            let mut p = self.inode_in(l.get(parent), &snap, parent)?;
            let mut c = self.inode_in(l.get(child), &snap, child)?;
            if dir {
                if c.kind != Kind::Dir {
                    return err(libc::ENOTDIR);
                }
                if !self.list_in(l.get(child), &snap, child)?.is_empty() {
                    return err(libc::ENOTEMPTY);
                }
            } else if c.kind == Kind::Dir {
                return err(libc::EISDIR);
            }
            drop(snap);
            let now = Time::now();
            p.mtime = now;
            p.changed(now);
            if dir {
                p.nlink -= 1;
                c.nlink = 0;
            } else {
                c.nlink = c.nlink.saturating_sub(1);
            }
            c.changed(now);
            l.get_mut(parent)
                .delta
                .dirents
                .entry(parent)
                .or_default()
                .insert(name.to_vec(), None);
            l.get_mut(parent).delta.inodes.insert(parent, Some(p));
            self.drop_link(l.get_mut(child), c);
            return Ok(());
        }
    }

    /// Stores an inode that lost a link: gone if nothing holds it, an orphan
    /// if it is still open or the kernel still holds it.
    pub(super) fn drop_link(&self, sh: &mut Shard, c: Inode) {
        let ino = c.ino;
        if c.nlink > 0 {
            sh.delta.inodes.insert(ino, Some(c));
        } else if sh.held(ino) {
            sh.delta.inodes.insert(ino, Some(c));
            sh.delta.orphans.insert(ino, true);
            sh.nameless.insert(ino);
        } else {
            self.forget_inode(sh, ino);
        }
    }

    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Inode> {
        check_name(name)?;
        self.writable(ino)?;
        self.writable(parent)?;
        if self.is_history_entry(parent, name) {
            return err(libc::EEXIST);
        }
        let mut l = self.lock_many(&[ino, parent]);
        let snap = self.snap()?;
        let mut i = self.inode_in(l.get(ino), &snap, ino)?;
        if i.kind == Kind::Dir {
            return err(libc::EPERM);
        }
        if i.nlink == 0 {
            return err(libc::ENOENT);
        }
        let mut p = self.inode_in(l.get(parent), &snap, parent)?;
        if p.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        if p.nlink == 0 {
            return err(libc::ENOENT);
        }
        if name == b"."
            || name == b".."
            || self
                .dirent_in(l.get(parent), &snap, parent, name)?
                .is_some()
        {
            return err(libc::EEXIST);
        }
        if i.nlink >= 65_000 {
            return err(libc::EMLINK);
        }
        drop(snap);
        let now = Time::now();
        i.nlink += 1;
        i.changed(now);
        p.mtime = now;
        p.changed(now);
        l.get_mut(parent)
            .delta
            .dirents
            .entry(parent)
            .or_default()
            .insert(name.to_vec(), Some((ino, i.kind)));
        l.get_mut(parent).delta.inodes.insert(parent, Some(p));
        l.get_mut(ino).delta.inodes.insert(ino, Some(i.clone()));
        Ok(i)
    }

    /// Opens a directory for listing ([`Fs::readdir`]); POSIX leaves
    /// changes made while it is read page by page unspecified.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        if is_history(ino) {
            if self.history_getattr(ino)?.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
        } else {
            let sh = self.shard(ino);
            let snap = self.snap()?;
            if self.inode_in(&sh, &snap, ino)?.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, Arc::new(Vec::new()));
        Ok(fh)
    }

    /// The listing of an open directory: taken anew when read from the
    /// start (the first read, and after `rewinddir`), else the one taken then.
    pub fn readdir(&self, fh: u64, ino: u64, offset: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        if offset == 0 {
            let listing = Arc::new(self.listing(ino)?);
            self.dirs.lock().insert(fh, listing.clone());
            return Ok(listing);
        }
        self.dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::Errno(libc::EBADF))
    }

    pub(super) fn listing(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        if is_history(ino) {
            return self.history_listing(ino);
        }
        let listing = {
            let sh = self.shard(ino);
            let snap = self.snap()?;
            let dir = self.inode_in(&sh, &snap, ino)?;
            if dir.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
            let mut v = dot_entries(ino, dir.parent);
            v.extend(
                self.list_in(&sh, &snap, ino)?
                    .into_iter()
                    .map(|(name, (ino, kind))| DirEntry { name, ino, kind }),
            );
            v
        };
        Ok(listing)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }
}

/// The `.` and `..` entries that start every directory listing.
pub(crate) fn dot_entries(ino: u64, parent: u64) -> Vec<DirEntry> {
    [(&b"."[..], ino), (&b".."[..], parent)]
        .into_iter()
        .map(|(name, ino)| DirEntry {
            name: name.to_vec(),
            ino,
            kind: Kind::Dir,
        })
        .collect()
}

pub(super) fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return err(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return err(libc::EINVAL);
    }
    Ok(())
}
