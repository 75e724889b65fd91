//! POSIX access control lists, kept as the kernel hands them over: the
//! `system.posix_acl_access` and `system.posix_acl_default` xattrs. With
//! FUSE_POSIX_ACL the kernel enforces them (and caches them); what it
//! leaves to the filesystem, as a local filesystem does it, is here: an
//! access ACL and the mode's permission bits are one thing seen twice
//! (`chmod` rewrites the ACL, setting the ACL rewrites the mode), and a
//! new inode in a directory with a default ACL takes it (the umask is then
//! not applied).
//!
//! ## Format (the kernel's `posix_acl_xattr`, little-endian)
//!
//! ```text
//! header: u32 version (2)
//! entry:  u16 tag, u16 perm (rwx bits), u32 id (uid or gid; -1 for the
//!         tags without one)
//! tags:   0x01 USER_OBJ, 0x02 USER, 0x04 GROUP_OBJ, 0x08 GROUP,
//!         0x10 MASK, 0x20 OTHER
//! ```

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// An ACL, its entries in the order they came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(pub Vec<Entry>);

impl Acl {
    /// Decodes an ACL xattr; `None` for anything malformed (the kernel
    /// checks what it sends; this is for what the store holds).
    pub fn parse(b: &[u8]) -> Option<Acl> {
        let (head, rest) = b.split_at_checked(4)?;
        if u32::from_le_bytes(head.try_into().ok()?) != VERSION || rest.len() % 8 != 0 {
            return None;
        }
        let entries = rest
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect::<Vec<_>>();
        let has = |t| entries.iter().filter(|e| e.tag == t).count();
        let known = entries
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER));
        let named = entries.iter().any(|e| e.tag == USER || e.tag == GROUP);
        // The three base entries once each; a mask, once, wherever a named
        // entry needs one.
        let valid = known
            && has(USER_OBJ) == 1
            && has(GROUP_OBJ) == 1
            && has(OTHER) == 1
            && has(MASK) <= 1
            && (!named || has(MASK) == 1);
        valid.then_some(Acl(entries))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(4 + 8 * self.0.len());
        b.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.0 {
            b.extend_from_slice(&e.tag.to_le_bytes());
            b.extend_from_slice(&e.perm.to_le_bytes());
            b.extend_from_slice(&e.id.to_le_bytes());
        }
        b
    }

    fn perm_of(&self, tag: u16) -> Option<u16> {
        self.0.iter().find(|e| e.tag == tag).map(|e| e.perm & 7)
    }

    /// Whether the mode's permission bits say all this ACL says (only the
    /// three base entries): then no ACL is stored, as on ext4.
    pub fn is_mode(&self) -> bool {
        self.0
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The permission bits (0o777) this ACL gives the mode: the group
    /// class is the mask where there is one.
    pub fn mode(&self) -> u16 {
        let u = self.perm_of(USER_OBJ).unwrap_or(0);
        let g = self
            .perm_of(MASK)
            .or_else(|| self.perm_of(GROUP_OBJ))
            .unwrap_or(0);
        let o = self.perm_of(OTHER).unwrap_or(0);
        u << 6 | g << 3 | o
    }

    /// The ACL after a `chmod` to `mode`: owner, group class (the mask if
    /// there is one) and others take the mode's bits; named entries stay.
    pub fn chmod(&self, mode: u16) -> Acl {
        let has_mask = self.perm_of(MASK).is_some();
        let mut out = self.clone();
        for e in &mut out.0 {
            let bits = match e.tag {
                USER_OBJ => mode >> 6,
                MASK => mode >> 3,
                GROUP_OBJ if !has_mask => mode >> 3,
                OTHER => mode,
                _ => continue,
            };
            e.perm = bits & 7;
        }
        out
    }

    /// What a new inode created with `mode` gets from its directory's
    /// default ACL (this one): its access ACL, and its permission bits,
    /// each narrowed by the other (the kernel's `posix_acl_create_masq`).
    pub fn create(&self, mode: u16) -> (Acl, u16) {
        let mut acl = self.clone();
        let mut mode = mode;
        let has_mask = acl.perm_of(MASK).is_some();
        for e in &mut acl.0 {
            match e.tag {
                USER_OBJ => {
                    e.perm &= (mode >> 6) & 7;
                    mode &= (e.perm << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= mode & 7;
                    mode &= e.perm | !0o007;
                }
                MASK | GROUP_OBJ if (e.tag == MASK) == has_mask => {
                    e.perm &= (mode >> 3) & 7;
                    mode &= (e.perm << 3) | !0o070;
                }
                _ => {}
            }
        }
        (acl, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> Entry {
        Entry { tag, perm, id }
    }

    const NONE: u32 = u32::MAX;

    fn named() -> Acl {
        Acl(vec![
            e(USER_OBJ, 7, NONE),
            e(USER, 5, 1000),
            e(GROUP_OBJ, 5, NONE),
            e(MASK, 7, NONE),
            e(OTHER, 1, NONE),
        ])
    }

    #[test]
    fn acls_round_trip_and_malformed_ones_are_refused() {
        let a = named();
        assert_eq!(Acl::parse(&a.encode()), Some(a.clone()));
        let mut b = a.encode();
        b[0] = 3;
        assert_eq!(Acl::parse(&b), None, "another version");
        assert_eq!(Acl::parse(&a.encode()[..11]), None, "a torn entry");
        let no_mask = Acl(vec![
            e(USER_OBJ, 7, NONE),
            e(USER, 5, 1000),
            e(GROUP_OBJ, 5, NONE),
            e(OTHER, 1, NONE),
        ]);
        assert_eq!(
            Acl::parse(&no_mask.encode()),
            None,
            "a named entry needs a mask"
        );
    }

    #[test]
    fn the_mode_shows_the_mask_as_the_group_class_and_chmod_writes_it_back() {
        let a = named();
        assert_eq!(a.mode(), 0o771);
        assert!(!a.is_mode());
        let c = a.chmod(0o640);
        assert_eq!(c.mode(), 0o640);
        // The owning group's own entry stays; the named user stays.
        assert_eq!(c.perm_of(GROUP_OBJ), Some(5));
        assert!(c.0.contains(&e(USER, 5, 1000)));
        let base = Acl(vec![
            e(USER_OBJ, 6, NONE),
            e(GROUP_OBJ, 4, NONE),
            e(OTHER, 0, NONE),
        ]);
        assert!(base.is_mode());
        assert_eq!(base.chmod(0o751).mode(), 0o751);
    }

    #[test]
    fn a_new_inode_takes_the_default_acl_narrowed_by_its_mode() {
        // setfacl -d -m u::rwx,u:1000:rx,g::rx,m::rwx,o::- ; touch (0666).
        let d = Acl(vec![
            e(USER_OBJ, 7, NONE),
            e(USER, 5, 1000),
            e(GROUP_OBJ, 5, NONE),
            e(MASK, 7, NONE),
            e(OTHER, 0, NONE),
        ]);
        let (acl, mode) = d.create(0o666);
        assert_eq!(mode, 0o660);
        assert_eq!(acl.mode(), 0o660);
        assert_eq!(acl.perm_of(MASK), Some(6));
        assert_eq!(
            acl.perm_of(GROUP_OBJ),
            Some(5),
            "the group entry is not narrowed"
        );
        // mkdir (0777) keeps the default's bits.
        assert_eq!(d.create(0o777).1, 0o770);
    }
}
