//! Space: size limits and the space fallocate promises.

use super::*;

#[test]
fn sizes_past_the_largest_offset_are_efbig_for_write_truncate_and_fallocate() {
    let (_d, fs) = fresh();
    let (f, _fh) = fs.create(ROOT_CTX, ROOT, b"big", 0o644).unwrap();
    let max = i64::MAX as u64;
    let size = |s| SetAttr {
        size: Some(s),
        ..SetAttr::default()
    };
    assert_eq!(errno(fs.setattr(f.ino, size(max + 1))), libc::EFBIG);
    assert_eq!(errno(fs.fallocate(f.ino, max, 1, 0)), libc::EFBIG);
    assert_eq!(errno(fs.fallocate(f.ino, 1, max, 0)), libc::EFBIG);
    assert_eq!(errno(fs.write(f.ino, max, b"x")), libc::EFBIG);
    // Up to the limit itself is a size like any other.
    assert_eq!(fs.setattr(f.ino, size(max)).unwrap().size, max);
    assert_eq!(fs.getattr(f.ino).unwrap().size, max);
}

#[test]
fn fallocate_promises_the_blocks_that_are_not_full_until_writes_fill_them() {
    let (_d, fs) = fresh();
    let bs = 4096;
    let (f, fh) = fs.create(ROOT_CTX, ROOT, b"f", 0o644).unwrap();
    fs.write(f.ino, 0, &[1u8; 8192]).unwrap();
    fs.write(f.ino, 8192, &[1u8; 100]).unwrap();
    // Blocks 0 and 1 are full: blocks 2 (partly written) to 9 are promised.
    fs.fallocate(f.ino, 0, 10 * bs, 0).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().size, 10 * bs);
    assert_eq!(fs.promised_bytes(), 8 * bs);
    // Allocating again promises nothing twice.
    fs.fallocate(f.ino, 0, 10 * bs, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(fs.promised_bytes(), 8 * bs);
    // A partly written block stays promised, across a commit too.
    fs.write(f.ino, 3 * bs, &[2u8; 10]).unwrap();
    fs.commit("test").unwrap();
    assert_eq!(fs.promised_bytes(), 8 * bs);
    // Filling blocks 2 to 5 lets them go.
    fs.write(f.ino, 2 * bs, &vec![3u8; 4 * bs as usize])
        .unwrap();
    assert_eq!(fs.promised_bytes(), 4 * bs);
    // Past the end of file (KEEP_SIZE): promised, the size unchanged.
    fs.fallocate(f.ino, 10 * bs, 2 * bs, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(fs.promised_bytes(), 6 * bs);
    assert_eq!(fs.getattr(f.ino).unwrap().size, 10 * bs);
    // A punch lets whole blocks go; a truncate lets go what it cuts off.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    fs.fallocate(f.ino, 6 * bs, bs + 1, punch).unwrap();
    assert_eq!(fs.promised_bytes(), 5 * bs);
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(8 * bs),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(fs.promised_bytes(), bs, "block 7 is left");
    // Deleting the file lets the rest go, once it is closed (until then
    // it can still be written).
    fs.unlink(ROOT, b"f").unwrap();
    assert_eq!(fs.promised_bytes(), bs);
    fs.release_handle(f.ino, fh).unwrap();
    assert_eq!(fs.promised_bytes(), 0);
    fs.commit("test").unwrap();
}

#[test]
fn while_space_is_promised_other_writes_that_would_take_it_are_refused() {
    let (_d, fs) = fresh();
    let mib = 1u64 << 20;
    fs.cap_room(8 * mib);
    let (kept, _) = fs.create(ROOT_CTX, ROOT, b"kept", 0o644).unwrap();
    let (other, _) = fs.create(ROOT_CTX, ROOT, b"other", 0o644).unwrap();
    // More than the room: refused, nothing promised, the size unchanged.
    assert_eq!(errno(fs.fallocate(kept.ino, 0, 9 * mib, 0)), libc::ENOSPC);
    assert_eq!(fs.promised_bytes(), 0);
    assert_eq!(fs.getattr(kept.ino).unwrap().size, 0);
    fs.fallocate(kept.ino, 0, 4 * mib, 0).unwrap();
    // Other writes go until they would eat into the promise.
    let chunk = vec![7u8; 256 << 10];
    let mut written = 0;
    let refused = loop {
        match fs.write(other.ino, written, &chunk) {
            Ok(_) => written += chunk.len() as u64,
            Err(e) => break e.errno(),
        }
        assert!(written <= 8 * mib, "never refused");
    };
    assert_eq!(refused, libc::ENOSPC);
    assert!(written >= 2 * mib, "refused too early: {written}");
    assert!(written <= 4 * mib, "took promised room: {written}");
    // The promised file is written in full all the same.
    let data: Vec<u8> = (0..4 * mib).map(|i| (i % 249) as u8).collect();
    fs.write(kept.ino, 0, &data).unwrap();
    assert_eq!(fs.promised_bytes(), 0);
    fs.commit("test").unwrap();
    assert_eq!(fs.read(kept.ino, 0, 4 << 20).unwrap(), data);
    // With nothing promised, writes are no longer checked at write time.
    fs.write(other.ino, written, &chunk).unwrap();
}
