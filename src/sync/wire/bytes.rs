//! The primitives every frame body is written and read with: integers
//! little-endian, strings and byte strings with their length, lists with
//! their count, each checked against the bytes left before it allocates.

use super::{WireError, WireResult};

pub(super) fn count(n: usize) -> WireResult<u32> {
    u32::try_from(n).map_err(|_| WireError::Bad {
        what: "any",
        why: format!("{n} items or bytes do not fit a frame"),
    })
}

pub(super) struct Writer<'a>(pub(super) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(super) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_le_bytes());
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    pub(super) fn str(&mut self, s: &str) -> WireResult<()> {
        let n = u16::try_from(s.len()).map_err(|_| WireError::Bad {
            what: "string",
            why: format!("{} bytes, over 65,535", s.len()),
        })?;
        self.u16(n);
        self.bytes(s.as_bytes());
        Ok(())
    }
}

pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
    pub(super) what: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn bad(&self, why: impl Into<String>) -> WireError {
        WireError::Bad {
            what: self.what,
            why: why.into(),
        }
    }

    pub(super) fn take(&mut self, n: usize, field: &'static str) -> WireResult<&'a [u8]> {
        if self.b.len() < n {
            return Err(WireError::Short {
                what: self.what,
                field,
            });
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self, field: &'static str) -> WireResult<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    pub(super) fn u16(&mut self, field: &'static str) -> WireResult<u16> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(super) fn u32(&mut self, field: &'static str) -> WireResult<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(super) fn u64(&mut self, field: &'static str) -> WireResult<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A list's count (or a byte string's length), checked against the
    /// bytes left at `size` bytes an item.
    pub(super) fn count(&mut self, field: &'static str, size: usize) -> WireResult<usize> {
        let n = self.u32(field)? as usize;
        if n.saturating_mul(size) > self.b.len() {
            return Err(WireError::Short {
                what: self.what,
                field,
            });
        }
        Ok(n)
    }

    /// A list of items of `size` bytes each, read by `item`.
    pub(super) fn list<T>(
        &mut self,
        field: &'static str,
        size: usize,
        item: impl Fn(&mut Self) -> WireResult<T>,
    ) -> WireResult<Vec<T>> {
        let n = self.count(field, size)?;
        (0..n).map(|_| item(self)).collect()
    }

    pub(super) fn str(&mut self, field: &'static str) -> WireResult<String> {
        let n = self.u16(field)? as usize;
        let b = self.take(n, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad(format!("{field} is not UTF-8")))
    }
}
