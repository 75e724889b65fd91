//! Opening files: OPEN, and CREATE, which opens what it makes (or, for
//! a name that came after the kernel looked, what is there).

use super::*;

/// Whether an open with `flags` writes (a cut writes).
fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// `fuse_open_in`: flags, open_flags (u32).
pub(super) fn open(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let mut a = Args::new(req.op);
    let (flags, open_flags) = a.u32().zip(a.u32()).ok_or(EINVAL)?;
    let flags = flags as i32;
    let fh = o.fs.open(req.hdr.nodeid, writes(flags))?;
    if flags & libc::O_TRUNC != 0 && open_flags & FUSE_OPEN_KILL_SUIDGID != 0 {
        o.kill_privs(req.hdr.nodeid)?;
    }
    // Generated files are read from us every time; the rest keeps the
    // page cache across opens.
    let open_flags = if o.fs.is_generated(req.hdr.nodeid) {
        FOPEN_DIRECT_IO
    } else {
        FOPEN_KEEP_CACHE
    };
    Ok(out.open_out(fh, open_flags)?)
}

/// `fuse_create_in`: flags, mode, umask, open_flags (u32); payload: name.
pub(super) fn create(o: &Ops, req: &Request, out: &mut Out) -> Res {
    let mut a = Args::new(req.op);
    let (flags, mode, umask, open_flags) =
        (|| Some((a.u32()?, a.u32()?, a.u32()?, a.u32()?)))().ok_or(EINVAL)?;
    let flags = flags as i32;
    let (i, fh) = match o
        .fs
        .create(ctx_masked(req, umask), req.hdr.nodeid, name(req)?, mode)
    {
        Ok(made) => made,
        // The name came after the kernel looked (a change from another
        // peer applied meanwhile, its negative entry not yet dropped):
        // without O_EXCL an open that may create opens what is there, as
        // on a local filesystem.
        Err(e) if e.errno() == libc::EEXIST && flags & libc::O_EXCL == 0 => {
            open_existing(o, req, flags, open_flags)?
        }
        Err(e) => return Err(e.into()),
    };
    entry(o, out, &i)?;
    Ok(out.open_out(fh, FOPEN_KEEP_CACHE)?)
}

/// The open of `create` when its name is there: what the kernel would
/// have checked for an existing file (a directory, the caller's access),
/// then `O_TRUNC` (and, as the kernel's `open_flags` say, the set-ID bits
/// dropped).
fn open_existing(
    o: &Ops,
    req: &Request,
    flags: i32,
    open_flags: u32,
) -> Result<(crate::fs::Inode, u64), Errno> {
    let mut i = o.fs.lookup(req.hdr.nodeid, name(req)?)?;
    let write = writes(flags);
    let read = flags & libc::O_ACCMODE != libc::O_WRONLY;
    let refuse = if i.kind == crate::fs::Kind::Dir {
        Some(libc::EISDIR)
    } else if req.hdr.uid != 0 {
        // Owner, group, other: the first class the caller is in decides
        // (its supplementary groups are not in the request).
        let shift = if i.uid == req.hdr.uid {
            6
        } else if i.gid == req.hdr.gid {
            3
        } else {
            0
        };
        let bits = (i.perm >> shift) & 0o7;
        ((read && bits & 0o4 == 0) || (write && bits & 0o2 == 0)).then_some(libc::EACCES)
    } else {
        None
    };
    if let Some(e) = refuse {
        return Err(Errno(e));
    }
    if flags & libc::O_TRUNC != 0 {
        o.fs.setattr(
            i.ino,
            SetAttr {
                size: Some(0),
                ..Default::default()
            },
        )?;
        if open_flags & FUSE_OPEN_KILL_SUIDGID != 0 {
            o.kill_privs(i.ino)?;
        }
        i = o.fs.getattr(i.ino)?;
    }
    let fh = o.fs.open(i.ino, write)?;
    Ok((i, fh))
}
