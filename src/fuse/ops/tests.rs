//! The opcode table, and CREATE against a real core.

use super::*;

/// A CREATE for `name` in the root from `uid`, with open `flags`.
fn create_req(name: &[u8], flags: i32, uid: u32) -> (wire::InHeader, Vec<u8>, Vec<u8>) {
    let hdr = wire::InHeader {
        len: 0,
        opcode: op::CREATE,
        unique: 1,
        nodeid: 1,
        uid,
        gid: uid,
        pid: 1,
    };
    let mut arg = Vec::new();
    for v in [flags as u32, 0o100644, 0o022, 0] {
        arg.extend_from_slice(&v.to_le_bytes());
    }
    let mut payload = name.to_vec();
    payload.push(0);
    (hdr, arg, payload)
}

/// An open that may create, for a name that came after the kernel
/// looked (a change from another peer): it opens the file there, as
/// on a local filesystem, unless O_EXCL, a directory, or the file's
/// mode says otherwise; O_TRUNC cuts it.
#[test]
fn an_open_that_may_create_opens_a_name_that_came_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::mount(
        dir.path(),
        crate::fs::FsOptions {
            io_threads: false,
            ..Default::default()
        },
    )
    .unwrap();
    let fs = Arc::new(fs);
    let ops = Ops::new(fs.clone(), false, Duration::from_secs(1));
    let mut buf = vec![0u8; 4096];
    let mut call = |name: &[u8], flags: i32, uid: u32| {
        let (hdr, arg, payload) = create_req(name, flags, uid);
        create(&ops, &hdr.request(&arg, &payload), &mut Out::new(&mut buf))
    };
    let rw = libc::O_CREAT | libc::O_RDWR;
    call(b"f", rw, 0).unwrap();
    let ino = fs.lookup(1, b"f").unwrap().ino;
    fs.write(ino, 0, b"kept").unwrap();
    call(b"f", rw, 0).expect("opened, not EEXIST");
    assert_eq!(fs.read(ino, 0, 10).unwrap(), b"kept");
    assert_eq!(call(b"f", rw | libc::O_EXCL, 0), Err(Errno(libc::EEXIST)));
    assert_eq!(
        call(b"f", libc::O_CREAT | libc::O_RDONLY, 1000),
        Ok(()),
        "0644: others may read"
    );
    assert_eq!(call(b"f", rw, 1000), Err(Errno(libc::EACCES)));
    call(b"f", rw | libc::O_TRUNC, 0).unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 0);
    fs.mkdir(
        Ctx {
            uid: 0,
            gid: 0,
            umask: 0o022,
        },
        1,
        b"d",
        0o755,
    )
    .unwrap();
    assert_eq!(call(b"d", rw, 0), Err(Errno(libc::EISDIR)));
}

#[test]
fn the_table_knows_every_opcode_we_serve_and_nothing_else() {
    assert_eq!(handler(op::LOOKUP).map(|h| h.name), Some("lookup"));
    assert_eq!(handler(op::WRITE).map(|h| h.arg), Some(40));
    assert!(handler(op::FORGET).is_some_and(|h| !h.reply));
    assert!(handler(op::POLL).is_none());
    assert!(handler(op::INIT).is_none(), "fuser negotiates INIT");
    assert!(handler(u32::MAX).is_none());
    assert!(handler(TABLE_LEN as u32).is_none());
}
