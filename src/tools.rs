//! What the history commands (`log`, `diff`) compute, from a live mount's
//! `.zippy/versions/<id>/` trees. Files are followed by path; a path that
//! names another inode in a later version (replaced) counts as modified,
//! and an inode that moved between two versions is a rename.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What a path was in one version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: char,
    pub size: u64,
    pub mode: u32,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    /// The inode's number in the live filesystem.
    pub ino: u64,
}

fn meta(path: &Path) -> Option<Meta> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let t = m.file_type();
    Some(Meta {
        kind: if t.is_dir() {
            'd'
        } else if t.is_symlink() {
            'l'
        } else {
            'f'
        },
        size: if t.is_dir() { 0 } else { m.len() },
        mode: m.mode(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        ino: crate::fs::live_ino(m.ino()),
    })
}

/// A mount's history: its root and its kept versions.
pub struct History {
    pub root: PathBuf,
    pub history: PathBuf,
    /// Kept versions: id → time (unix nanoseconds).
    pub versions: BTreeMap<u64, u64>,
}

impl History {
    pub fn view(&self, v: u64) -> PathBuf {
        self.history.join("versions").join(v.to_string())
    }

    /// The versions in which `rel` (a path relative to the mount root)
    /// appeared, changed or disappeared, with what happened.
    pub fn log(&self, rel: &Path) -> Vec<(u64, &'static str)> {
        let mut out = Vec::new();
        let mut prev: Option<Meta> = None;
        for &v in self.versions.keys() {
            let now = meta(&self.view(v).join(rel));
            let what = match (&prev, &now) {
                (None, Some(_)) => Some("created"),
                (Some(_), None) => Some("deleted"),
                (Some(a), Some(b)) if a != b => Some("modified"),
                _ => None,
            };
            if let Some(w) = what {
                out.push((v, w));
            }
            prev = now;
        }
        out
    }

    /// Every path under `rel` in version `v`, relative to the mount root.
    fn tree(&self, v: u64, rel: &Path) -> BTreeMap<PathBuf, Meta> {
        let base = self.view(v);
        let mut out = BTreeMap::new();
        let mut stack = vec![rel.to_path_buf()];
        while let Some(p) = stack.pop() {
            let Some(m) = meta(&base.join(&p)) else {
                continue;
            };
            if m.kind == 'd'
                && let Ok(rd) = std::fs::read_dir(base.join(&p))
            {
                for e in rd.flatten() {
                    stack.push(p.join(e.file_name()));
                }
            }
            if !p.as_os_str().is_empty() {
                out.insert(p, m);
            }
        }
        out
    }

    /// What changed under `rel` from version `a` to version `b`.
    pub fn diff(&self, a: u64, b: u64, rel: &Path) -> Diff {
        let (old, new) = (self.tree(a, rel), self.tree(b, rel));
        let mut d = Diff::default();
        for (p, m) in &old {
            match new.get(p) {
                None => d.removed.push(p.clone()),
                Some(n) if n != m && !(m.kind == 'd' && n.kind == 'd' && m.ino == n.ino) => {
                    d.modified.push(p.clone())
                }
                _ => {}
            }
        }
        d.added = new
            .keys()
            .filter(|p| !old.contains_key(*p))
            .cloned()
            .collect();
        // An inode removed at one path and added at another moved.
        let added_by_ino: BTreeMap<u64, PathBuf> =
            d.added.iter().map(|p| (new[p].ino, p.clone())).collect();
        let mut renamed = Vec::new();
        d.removed.retain(|p| match added_by_ino.get(&old[p].ino) {
            Some(to) => {
                renamed.push((p.clone(), to.clone()));
                false
            }
            None => true,
        });
        d.added.retain(|p| !renamed.iter().any(|(_, to)| to == p));
        d.renamed = renamed;
        d
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
    pub modified: Vec<PathBuf>,
    pub renamed: Vec<(PathBuf, PathBuf)>,
}

/// Makes `dest` what `src` (a path in a version view) is: files copied with
/// their permission bits, symlinks recreated, directories made to hold
/// exactly the entries the old one held. Returns the number of files and
/// symlinks written.
pub fn restore(src: &Path, dest: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(src)?;
    let t = m.file_type();
    let existing = std::fs::symlink_metadata(dest).ok();
    // Whatever stands at `dest` and is of another kind goes first.
    if let Some(e) = &existing {
        let same = (t.is_dir() && e.is_dir()) || (t.is_file() && e.is_file());
        if !same {
            if e.is_dir() {
                std::fs::remove_dir_all(dest)?;
            } else {
                std::fs::remove_file(dest)?;
            }
        }
    }
    if t.is_symlink() {
        if std::fs::symlink_metadata(dest).is_ok() {
            std::fs::remove_file(dest)?;
        }
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dest)?;
        return Ok(1);
    }
    if t.is_file() {
        std::fs::copy(src, dest)?;
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
        return Ok(1);
    }
    if !t.is_dir() {
        return Err(std::io::Error::other(format!(
            "{}: only files, directories and symlinks are restored",
            src.display()
        )));
    }
    if std::fs::symlink_metadata(dest).is_err() {
        std::fs::create_dir(dest)?;
    }
    let wanted: std::collections::BTreeSet<std::ffi::OsString> = std::fs::read_dir(src)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    for e in std::fs::read_dir(dest)? {
        let e = e?;
        if !wanted.contains(&e.file_name()) {
            let p = e.path();
            if e.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    let mut n = 0;
    for name in &wanted {
        n += restore(&src.join(name), &dest.join(name))?;
    }
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    Ok(n)
}

pub use crate::fs::parse_time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_back_to_their_instants() {
        const S: i64 = 1_000_000_000;
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123456789Z"),
            Some(1_700_000_000 * S + 123_456_789)
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z"),
            Some(1_700_000_000 * S + 500_000_000)
        );
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Some(951_782_400 * S));
        assert_eq!(parse_time("@42"), Some(42 * S));
        assert_eq!(parse_time("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
