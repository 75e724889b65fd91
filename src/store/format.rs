//! The on-disk format of the store file. Everything is little-endian.
//!
//! The file is an array of 4096-byte pages. Page 0 and page 1 are the two
//! commit slots; every other page belongs to a B+Tree node, an overflow value,
//! a data extent, the saved allocator state, or is free.
//!
//! ## Commit slot (pages 0 and 1; only the first 128 bytes are used)
//!
//! ```text
//! off size field
//!   0    8 magic "ZIPPYST1"
//!   8    4 format version (1)
//!  12    4 page size (4096)
//!  16    8 txn: commit sequence number; the valid slot with the larger txn wins
//!  24    8 version: id of the newest version (0 = none yet)
//!  32    8 time of that version, unix nanoseconds
//!  40   24 data root of the newest version: page (0 = empty tree), birth, checksum
//!  64   24 system root (the version table): page, birth, checksum
//!  88    8 high-water mark: pages [0, hwm) are in use or free, [hwm, ..) unused
//!  96    8 allocator state first page (0 = not saved: rebuild by walking)
//! 104    8 allocator state page count
//! 112    8 reserved, zero
//! 120    8 xxh3-64 of bytes [0, 120)
//! ```
//!
//! Commit N writes slot N % 2, so the previous commit's slot is never touched
//! while a new one is written.
//!
//! ## Page header (every page but the slots, 32 bytes)
//!
//! ```text
//! off size field
//!   0    1 kind: 1 leaf, 2 branch, 3 overflow value, 4 allocator state
//!   1    1 flags (0)
//!   2    2 count: entries in a node
//!   4    4 run length in pages (overflow and allocator state; 1 for nodes)
//!   8    8 xxh3-64 of the whole run with these 8 bytes read as zero
//!  16    8 page number of this page (catches misdirected writes)
//!  24    8 birth: the txn that wrote it
//! ```
//!
//! Node layouts are described in `node.rs`, the allocator state in `alloc.rs`.

use crate::store::error::{StoreError, StoreResult};

pub const PAGE_SIZE: usize = 4096;
pub const PAGE: u64 = PAGE_SIZE as u64;
pub const HEADER_SIZE: usize = 32;
/// Pages 0 and 1 are the commit slots; the first page anything else may use.
pub const FIRST_DATA_PAGE: u64 = 2;

pub const MAGIC: [u8; 8] = *b"ZIPPYST1";
pub const FORMAT_VERSION: u32 = 1;
const SLOT_CHECKSUM_AT: usize = 120;
pub const SLOT_SIZE: usize = 128;

pub const KIND_LEAF: u8 = 1;
pub const KIND_BRANCH: u8 = 2;
pub const KIND_OVERFLOW: u8 = 3;
pub const KIND_ALLOC: u8 = 4;

pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

pub fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
pub fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A reference to a node or overflow run: where it is, the txn that wrote
/// it, and the checksum it was sealed with. Page 0 means "nothing".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ptr {
    pub page: u64,
    pub birth: u64,
    pub sum: u64,
}

impl Ptr {
    pub const NONE: Ptr = Ptr {
        page: 0,
        birth: 0,
        sum: 0,
    };

    pub fn is_none(&self) -> bool {
        self.page == 0
    }
}

/// One commit slot, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub txn: u64,
    pub version: u64,
    pub time: u64,
    pub data_root: Ptr,
    pub system_root: Ptr,
    pub hwm: u64,
    pub alloc_page: u64,
    pub alloc_pages: u64,
}

impl Slot {
    pub fn encode(&self) -> [u8; SLOT_SIZE] {
        let mut b = [0u8; SLOT_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        put_u32(&mut b, 8, FORMAT_VERSION);
        put_u32(&mut b, 12, PAGE_SIZE as u32);
        put_u64(&mut b, 16, self.txn);
        put_u64(&mut b, 24, self.version);
        put_u64(&mut b, 32, self.time);
        for (at, p) in [(40, self.data_root), (64, self.system_root)] {
            put_u64(&mut b, at, p.page);
            put_u64(&mut b, at + 8, p.birth);
            put_u64(&mut b, at + 16, p.sum);
        }
        put_u64(&mut b, 88, self.hwm);
        put_u64(&mut b, 96, self.alloc_page);
        put_u64(&mut b, 104, self.alloc_pages);
        let sum = checksum(&b[..SLOT_CHECKSUM_AT]);
        put_u64(&mut b, SLOT_CHECKSUM_AT, sum);
        b
    }

    /// Decodes a slot; `Ok(None)` for a slot that was never written or is torn.
    /// A slot that checks out but has another format is an error: it is not ours
    /// to guess at.
    pub fn decode(b: &[u8]) -> StoreResult<Option<Slot>> {
        if b.len() < SLOT_SIZE || b[0..8] != MAGIC {
            return Ok(None);
        }
        if get_u64(b, SLOT_CHECKSUM_AT) != checksum(&b[..SLOT_CHECKSUM_AT]) {
            return Ok(None);
        }
        let fv = get_u32(b, 8);
        let ps = get_u32(b, 12);
        if fv != FORMAT_VERSION || ps as usize != PAGE_SIZE {
            return Err(StoreError::Unsupported(format!(
                "format version {fv}, page size {ps} (this build reads version {FORMAT_VERSION}, page size {PAGE_SIZE})"
            )));
        }
        Ok(Some(Slot {
            txn: get_u64(b, 16),
            version: get_u64(b, 24),
            time: get_u64(b, 32),
            data_root: get_ptr(b, 40),
            system_root: get_ptr(b, 64),
            hwm: get_u64(b, 88),
            alloc_page: get_u64(b, 96),
            alloc_pages: get_u64(b, 104),
        }))
    }
}

impl Slot {
    /// Checks what a slot whose checksum holds says against what any
    /// commit can write; a slot that fails was not written by zippyfs as it
    /// is (a bug or deliberate damage), and its numbers must not be used to
    /// size or address anything.
    pub fn validate(&self) -> Result<(), String> {
        let max_pages = u64::MAX / PAGE;
        if self.hwm < FIRST_DATA_PAGE || self.hwm > max_pages {
            return Err(format!("high-water mark {} is impossible", self.hwm));
        }
        for (what, p) in [
            ("data root", self.data_root),
            ("system root", self.system_root),
        ] {
            if !p.is_none() && (p.page < FIRST_DATA_PAGE || p.page >= self.hwm) {
                return Err(format!(
                    "{what} at page {} lies outside pages {FIRST_DATA_PAGE}..{}",
                    p.page, self.hwm
                ));
            }
        }
        if self.alloc_page == 0 && self.alloc_pages != 0 {
            return Err(format!(
                "allocator state of {} pages at page 0",
                self.alloc_pages
            ));
        }
        if self.alloc_page != 0 {
            let end = self.alloc_page.checked_add(self.alloc_pages);
            if self.alloc_pages == 0
                || self.alloc_page < FIRST_DATA_PAGE
                || end.is_none_or(|e| e > self.hwm)
            {
                return Err(format!(
                    "allocator state at pages {}+{} lies outside pages {FIRST_DATA_PAGE}..{}",
                    self.alloc_page, self.alloc_pages, self.hwm
                ));
            }
        }
        if self.version > self.txn {
            return Err(format!(
                "version {} is newer than its commit {}",
                self.version, self.txn
            ));
        }
        Ok(())
    }
}

/// The byte offset of `page`. Page numbers come from the disk, so the
/// multiplication is checked: a page past any file is damage, named.
pub fn page_offset(page: u64) -> StoreResult<u64> {
    page.checked_mul(PAGE)
        .ok_or_else(|| StoreError::corrupt(page, "page number past the end of any file"))
}

/// The bytes of a run of `pages` pages starting at `page` (both from the
/// disk): its offset and length, checked.
pub fn run_span(page: u64, pages: u64) -> StoreResult<(u64, usize)> {
    let off = page_offset(page)?;
    let len = pages
        .checked_mul(PAGE)
        .filter(|l| off.checked_add(*l).is_some())
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| {
            StoreError::corrupt(
                page,
                format!("run of {pages} pages past the end of any file"),
            )
        })?;
    Ok((off, len))
}

fn get_ptr(b: &[u8], at: usize) -> Ptr {
    Ptr {
        page: get_u64(b, at),
        birth: get_u64(b, at + 8),
        sum: get_u64(b, at + 16),
    }
}

/// Fills in the header of a run of pages and seals it with its checksum;
/// returns the reference a parent keeps to it.
pub fn seal(run: &mut [u8], kind: u8, count: u16, page: u64, birth: u64) -> Ptr {
    debug_assert!(run.len().is_multiple_of(PAGE_SIZE) && !run.is_empty());
    run[0] = kind;
    run[1] = 0;
    put_u16(run, 2, count);
    put_u32(run, 4, (run.len() / PAGE_SIZE) as u32);
    put_u64(run, 8, 0);
    put_u64(run, 16, page);
    put_u64(run, 24, birth);
    let sum = checksum(run);
    put_u64(run, 8, sum);
    Ptr { page, birth, sum }
}

/// Checks that a run is the one `want` refers to: the page it claims to be,
/// written by the txn and sealed with the checksum the reference names. Only
/// the header is read: the run's own checksum is checked by `verify_run`.
pub fn check_ref(run: &[u8], want: &Ptr) -> StoreResult<()> {
    let (birth, sum) = (get_u64(run, 24), get_u64(run, 8));
    if birth != want.birth || sum != want.sum {
        return Err(StoreError::Corrupt {
            page: want.page,
            reason: format!(
                "holds the page written by txn {birth} (checksum {sum:016x}), not the one its reference names (txn {}, checksum {:016x}): a lost or misdirected write",
                want.birth, want.sum
            ),
        });
    }
    Ok(())
}

/// Checks a run's header and checksum: that it is the page it claims, of a kind
/// the caller expects, and unchanged since it was sealed.
pub fn verify_run(run: &[u8], page: u64, kinds: &[u8]) -> StoreResult<()> {
    let corrupt = |reason: String| Err(StoreError::Corrupt { page, reason });
    if run.len() < PAGE_SIZE {
        return corrupt("run shorter than a page".into());
    }
    if !kinds.contains(&run[0]) {
        return corrupt(format!("unexpected page kind {}", run[0]));
    }
    if get_u64(run, 16) != page {
        return corrupt(format!("page claims to be page {}", get_u64(run, 16)));
    }
    let pages = get_u32(run, 4) as usize;
    if pages * PAGE_SIZE != run.len() {
        return corrupt(format!(
            "run of {pages} pages where {} were expected",
            run.len() / PAGE_SIZE
        ));
    }
    let stored = get_u64(run, 8);
    // The checksum was computed with its own field zero; recompute it the same
    // way without copying the run.
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&run[..8]);
    h.update(&[0u8; 8]);
    h.update(&run[16..]);
    if h.digest() != stored {
        return corrupt("checksum mismatch".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_round_trips_and_detects_a_flipped_bit() {
        let s = Slot {
            txn: 7,
            version: 5,
            time: 99,
            data_root: Ptr {
                page: 3,
                birth: 6,
                sum: 0xabc,
            },
            system_root: Ptr {
                page: 4,
                birth: 7,
                sum: 0xdef,
            },
            hwm: 10,
            alloc_page: 0,
            alloc_pages: 0,
        };
        let mut b = s.encode();
        assert_eq!(Slot::decode(&b).unwrap(), Some(s));
        b[40] ^= 1;
        assert_eq!(Slot::decode(&b).unwrap(), None);
    }

    #[test]
    fn sealed_run_verifies_and_names_the_page_when_damaged() {
        let mut run = vec![0u8; 2 * PAGE_SIZE];
        run[5000] = 42;
        seal(&mut run, KIND_OVERFLOW, 0, 17, 3);
        verify_run(&run, 17, &[KIND_OVERFLOW]).unwrap();
        assert!(verify_run(&run, 18, &[KIND_OVERFLOW]).is_err());
        run[6000] ^= 0x10;
        let err = verify_run(&run, 17, &[KIND_OVERFLOW]).unwrap_err();
        assert!(err.to_string().contains("page 17"), "{err}");
    }

    #[test]
    fn page_numbers_past_any_file_are_errors_naming_the_page() {
        let huge = u64::MAX / 3;
        let e = page_offset(huge).unwrap_err();
        assert!(e.to_string().contains(&format!("page {huge}")), "{e}");
        assert!(run_span(5, u64::MAX / 2).is_err());
        assert!(run_span(u64::MAX / PAGE - 1, 4).is_err());
        assert_eq!(run_span(3, 2).unwrap(), (3 * PAGE, 2 * PAGE_SIZE));
    }

    #[test]
    fn a_slot_with_impossible_fields_is_refused_with_the_field_named() {
        let good = Slot {
            txn: 9,
            version: 4,
            hwm: 100,
            data_root: Ptr {
                page: 50,
                birth: 9,
                sum: 1,
            },
            alloc_page: 90,
            alloc_pages: 10,
            ..Slot::default()
        };
        good.validate().unwrap();
        let cases: [(Slot, &str); 5] = [
            (Slot { hwm: 1, ..good }, "high-water mark"),
            (
                Slot {
                    hwm: u64::MAX,
                    ..good
                },
                "high-water mark",
            ),
            (
                Slot {
                    data_root: Ptr {
                        page: 100,
                        ..good.data_root
                    },
                    ..good
                },
                "data root",
            ),
            (
                Slot {
                    alloc_pages: u64::MAX,
                    ..good
                },
                "allocator state",
            ),
            (
                Slot {
                    version: 10,
                    ..good
                },
                "version",
            ),
        ];
        for (slot, field) in cases {
            let e = slot.validate().unwrap_err();
            assert!(e.contains(field), "{e} should name {field}");
        }
    }
}
