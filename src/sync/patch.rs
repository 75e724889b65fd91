//! A block sent as the bytes that differ from a block the receiver has.
//!
//! A 4 KiB write changes one page of a 64 KiB block, and the block's hash
//! changes with it; sent whole, the block costs sixteen times what was
//! written. Both sides know the block that stood at the same place before
//! (the sender's synced tree names it, the receiver holds every block it
//! was given), so the sender sends the runs that differ from it and the
//! receiver rebuilds the block and checks its hash: a patch that rebuilds
//! anything else is refused and the block asked for whole.
//!
//! ## Encoding (the body of a Patch frame, `wire.rs`)
//!
//! ```text
//! hash [32]   the block's BLAKE3
//! base [32]   the BLAKE3 of the block it is made against
//! len  u32    the block's length (at most the largest block)
//! runs list   of (offset u32, bytes): the base cut or grown with zeros
//!             to `len`, then each run written at its offset; runs lie
//!             inside `len`, in ascending order, not overlapping
//! ```

/// Blocks are compared in pieces of this many bytes: small enough that a
/// 4 KiB write sends about 4 KiB, large enough that a run's 8-byte header
/// is lost in its bytes.
const GRAIN: usize = 512;

/// A block as runs of bytes over a base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    pub len: u32,
    pub runs: Vec<(u32, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("a patch of a block of {0} bytes, over the largest block")]
    TooLong(u32),
    #[error("a patch's run at {off} of {len} bytes ends past the block or overlaps the last")]
    BadRun { off: u32, len: usize },
}

impl Patch {
    /// The bytes it carries (its runs' data).
    pub fn data_len(&self) -> usize {
        self.runs.iter().map(|(_, d)| d.len()).sum()
    }
}

/// The patch that turns `base` into `new`, if it carries at most half of
/// `new`'s bytes (else the block is better sent whole).
pub fn diff(base: &[u8], new: &[u8]) -> Option<Patch> {
    let len = u32::try_from(new.len()).ok()?;
    let mut runs: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut carried = 0usize;
    for (i, piece) in new.chunks(GRAIN).enumerate() {
        let off = i * GRAIN;
        // The base as the receiver sees it: cut, or grown with zeros.
        let same = match base.get(off..) {
            Some(b) if b.len() >= piece.len() => b[..piece.len()] == *piece,
            Some(b) => b == &piece[..b.len()] && piece[b.len()..].iter().all(|&x| x == 0),
            None => piece.iter().all(|&x| x == 0),
        };
        if same {
            continue;
        }
        carried += piece.len();
        if carried > new.len() / 2 {
            return None;
        }
        match runs.last_mut() {
            Some((start, data)) if *start as usize + data.len() == off => {
                data.extend_from_slice(piece)
            }
            // `off` < `len`, which fits in u32.
            _ => runs.push((off as u32, piece.to_vec())),
        }
    }
    Some(Patch { len, runs })
}

/// `base` with `patch` applied; `max` is the largest block there may be.
pub fn apply(base: &[u8], patch: &Patch, max: usize) -> Result<Vec<u8>, PatchError> {
    let len = patch.len as usize;
    if len > max {
        return Err(PatchError::TooLong(patch.len));
    }
    let mut out = base[..base.len().min(len)].to_vec();
    out.resize(len, 0);
    let mut end = 0usize;
    for (off, data) in &patch.runs {
        let off_us = *off as usize;
        let bad = || PatchError::BadRun {
            off: *off,
            len: data.len(),
        };
        if off_us < end {
            return Err(bad());
        }
        let stop = off_us.checked_add(data.len()).ok_or_else(bad)?;
        let Some(to) = out.get_mut(off_us..stop) else {
            return Err(bad());
        };
        to.copy_from_slice(data);
        end = stop;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_4k_write_in_a_64k_block_sends_4k() {
        let base: Vec<u8> = (0..65536u32).map(|i| (i * 7) as u8).collect();
        let mut new = base.clone();
        new[8192..12288].fill(0xEE);
        let p = diff(&base, &new).unwrap();
        assert_eq!(p.data_len(), 4096);
        assert_eq!(p.runs.len(), 1);
        assert_eq!(apply(&base, &p, 1 << 20).unwrap(), new);
    }

    #[test]
    fn a_block_mostly_changed_is_not_worth_a_patch() {
        let base = vec![1u8; 65536];
        let new = vec![2u8; 65536];
        assert_eq!(diff(&base, &new), None);
    }

    #[test]
    fn a_bad_patch_is_refused_not_a_panic() {
        let base = vec![0u8; 100];
        let run = |off: u32, n: usize| Patch {
            len: 100,
            runs: vec![(off, vec![1; n])],
        };
        assert!(apply(&base, &run(90, 20), 1 << 20).is_err());
        assert!(apply(&base, &run(u32::MAX, 2), 1 << 20).is_err());
        let overlapping = Patch {
            len: 100,
            runs: vec![(10, vec![1; 10]), (15, vec![2; 2])],
        };
        assert!(apply(&base, &overlapping, 1 << 20).is_err());
        let huge = Patch {
            len: u32::MAX,
            runs: Vec::new(),
        };
        assert_eq!(
            apply(&base, &huge, 1 << 20),
            Err(PatchError::TooLong(u32::MAX))
        );
    }

    proptest! {
        /// Whatever the two blocks (lengths differ, edits anywhere), the
        /// patch, when there is one, rebuilds the new block exactly.
        #[test]
        fn a_patch_rebuilds_the_new_block(
            base in proptest::collection::vec(any::<u8>(), 0..5000),
            edits in proptest::collection::vec((0usize..6000, proptest::collection::vec(any::<u8>(), 0..700)), 0..4),
            new_len in 0usize..6000,
        ) {
            let mut new = base.clone();
            new.resize(new_len, 0);
            for (at, bytes) in edits {
                for (i, b) in bytes.into_iter().enumerate() {
                    if let Some(x) = new.get_mut(at + i) {
                        *x = b;
                    }
                }
            }
            if let Some(p) = diff(&base, &new) {
                prop_assert!(p.data_len() <= new.len() / 2);
                prop_assert_eq!(apply(&base, &p, 1 << 20).unwrap(), new);
            }
        }
    }
}
