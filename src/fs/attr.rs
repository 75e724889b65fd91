//! Attributes: getattr and setattr, extended attributes, and dropping
//! set-user-ID and set-group-ID bits as a local filesystem does.

use super::*;

impl Fs {
    pub fn getattr(&self, ino: u64) -> FsResult<Inode> {
        if is_history(ino) {
            return self.history_getattr(ino);
        }
        let mut sh = self.shard(ino);
        Self::trip(&mut sh, ino, false);
        let snap = self.snap()?;
        self.inode_in(&sh, &snap, ino)
    }

    pub fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Inode> {
        self.writable(ino)?;
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        let now = Time::now();
        if let Some(size) = set.size {
            if i.kind == Kind::Dir {
                return err(libc::EISDIR);
            }
            if i.kind != Kind::File {
                return err(libc::EINVAL);
            }
            if size > MAX_FILE_SIZE {
                return err(libc::EFBIG);
            }
            if size != i.size {
                self.resize(&mut sh, &snap, &i, size)?;
                i.size = size;
                i.mtime = now;
            }
            i.changed(now);
        }
        if let Some(mode) = set.mode {
            i.perm = (mode & 0o7777) as u16;
            i.changed(now);
            // An access ACL follows the mode (the kernel leaves it to us).
            if let Some(a) = self
                .xattr_in(&sh, &snap, ino, acl::ACCESS)?
                .and_then(|v| acl::Acl::parse(&v))
            {
                let value = a.chmod(i.perm & 0o777).encode();
                sh.delta
                    .xattrs
                    .insert((ino, acl::ACCESS.to_vec()), Some(value));
            }
        }
        if let Some(uid) = set.uid {
            i.uid = uid;
            i.changed(now);
        }
        if let Some(gid) = set.gid {
            i.gid = gid;
            i.changed(now);
        }
        if let Some(t) = set.atime {
            i.atime = t;
            i.changed(now);
        }
        if let Some(t) = set.mtime {
            i.mtime = t;
            i.changed(now);
        }
        if let Some(t) = set.ctime {
            // The kernel's own stamp (writeback cache), kept apart from the
            // last one as any change's is.
            i.changed(t);
        }
        drop(snap);
        sh.delta.inodes.insert(ino, Some(i.clone()));
        Ok(i)
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> FsResult<()> {
        self.writable(ino)?;
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return err(libc::ERANGE);
        }
        if value.len() > XATTR_SIZE_MAX {
            return err(libc::E2BIG);
        }
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        let exists = self.xattr_in(&sh, &snap, ino, name)?.is_some();
        if create && exists {
            return err(libc::EEXIST);
        }
        if replace && !exists {
            return err(libc::ENODATA);
        }
        drop(snap);
        i.changed(Time::now());
        let mut value = Some(value.to_vec());
        if name == acl::ACCESS || name == acl::DEFAULT {
            let a = acl::Acl::parse(value.as_deref().unwrap_or_default())
                .ok_or(FsError::Errno(libc::EINVAL))?;
            if name == acl::DEFAULT && i.kind != Kind::Dir {
                return err(libc::EACCES);
            }
            if name == acl::ACCESS {
                // The ACL and the mode's permission bits are one thing: the
                // mode takes the ACL's, and an ACL the mode says in full is
                // not kept (as on ext4).
                i.perm = (i.perm & !0o777) | a.mode();
                if a.is_mode() {
                    value = None;
                }
            }
        }
        sh.delta.xattrs.insert((ino, name.to_vec()), value);
        sh.delta.inodes.insert(ino, Some(i));
        Ok(())
    }

    pub(super) fn xattr_in(
        &self,
        sh: &Shard,
        snap: &Snapshot<'_>,
        ino: u64,
        name: &[u8],
    ) -> FsResult<Option<Vec<u8>>> {
        let key = (ino, name.to_vec());
        match layered(sh, |d| d.xattrs.get(&key).map(|v| v.clone().ok_or(())))? {
            Found::Yes(v) => Ok(Some(v)),
            Found::Gone => Ok(None),
            Found::Unknown => Ok(snap.get(&xattr_key(ino, name))?.map(|v| v.to_vec())),
        }
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if is_history(ino) {
            return self.history_getxattr(ino, name);
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        self.inode_in(&sh, &snap, ino)?;
        self.xattr_in(&sh, &snap, ino, name)?
            .ok_or(FsError::Errno(libc::ENODATA))
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        if is_history(ino) {
            return self.history_listxattr(ino);
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        self.inode_in(&sh, &snap, ino)?;
        let mut names = std::collections::BTreeSet::new();
        let start = xattr_prefix(ino);
        let end = prefix_end(&start);
        for item in snap.range((Bound::Included(&start[..]), Bound::Excluded(&end[..])))? {
            let (k, _) = item?;
            names.insert(k[9..].to_vec());
        }
        for d in [sh.committing.as_deref(), Some(&sh.delta)]
            .into_iter()
            .flatten()
        {
            for ((i, name), v) in &d.xattrs {
                if *i == ino {
                    if v.is_some() {
                        names.insert(name.clone());
                    } else {
                        names.remove(name);
                    }
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.writable(ino)?;
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        if self.xattr_in(&sh, &snap, ino, name)?.is_none() {
            return err(libc::ENODATA);
        }
        drop(snap);
        i.changed(Time::now());
        sh.delta.xattrs.insert((ino, name.to_vec()), None);
        sh.delta.inodes.insert(ino, Some(i));
        Ok(())
    }

    /// Drops what a write, truncate or chown by an unprivileged caller must
    /// drop, which the kernel leaves to us (we ask for
    /// FUSE_HANDLE_KILLPRIV_V2, so it need not ask for `security.capability`
    /// before every write): set-user-ID always, set-group-ID when the file
    /// is group-executable (otherwise the bit marks mandatory locking, as
    /// the kernel's own rule has it), and the file capability.
    /// Returns whether anything changed (the kernel's cached mode is then
    /// stale: the caller tells it).
    pub fn kill_privs(&self, ino: u64) -> FsResult<bool> {
        const CAPS: &[u8] = b"security.capability";
        self.writable(ino)?;
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        let mut perm = u32::from(i.perm) & !libc::S_ISUID;
        if perm & libc::S_IXGRP != 0 {
            perm &= !libc::S_ISGID;
        }
        let caps = self.xattr_in(&sh, &snap, ino, CAPS)?.is_some();
        if perm == u32::from(i.perm) && !caps {
            return Ok(false);
        }
        drop(snap);
        i.perm = perm as u16;
        i.changed(Time::now());
        if caps {
            sh.delta.xattrs.insert((ino, CAPS.to_vec()), None);
        }
        sh.delta.inodes.insert(ino, Some(i));
        Ok(true)
    }

    /// Drops set-group-ID (setting an ACL by a caller outside the file's
    /// group, as the kernel tells us); whether it was set.
    pub fn drop_sgid(&self, ino: u64) -> FsResult<bool> {
        self.writable(ino)?;
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        drop(snap);
        if u32::from(i.perm) & libc::S_ISGID == 0 {
            return Ok(false);
        }
        i.perm &= !(libc::S_ISGID as u16);
        i.changed(Time::now());
        sh.delta.inodes.insert(ino, Some(i));
        Ok(true)
    }
}
