//! The simulation's local changes: what a program on a peer's mount does
//! (create, write, truncate, unlink, rename, link, chmod, xattr), made on
//! the peer's local tree as the mount's commit would report them.

use super::*;

impl Sim {
    pub(super) fn local_change(&mut self, p: usize) {
        let what = self.rng.below(11);
        let now = self.time;
        self.tokens += 1;
        let token = self.tokens;
        let mut fid = 0;
        if matches!(what, 0 | 1 | 9) {
            let sp = &mut self.peers[p];
            sp.fids += 1;
            fid = ((sp.peer.id as u128) << 64) | sp.fids as u128;
        }
        let mut rng = Rng(self.rng.next());
        let before = self.peers[p].peer.local.clone();
        let t = &mut self.peers[p].peer.local;
        let mut gone = Vec::new();
        let done = match what {
            0 => create(t, &mut rng, fid, Kind::File, now).inspect(|_| {
                if let Some(n) = t.node_mut(fid) {
                    n.blocks.insert(0, token_hash(token));
                }
            }),
            1 => create(t, &mut rng, fid, Kind::Dir, now),
            2 | 3 => write(t, &mut rng, token, now, &mut gone),
            4 => truncate(t, &mut rng, &mut gone),
            5 => unlink(t, &mut rng, &mut gone),
            6 => rename(t, &mut rng, &mut gone),
            7 => link(t, &mut rng),
            8 => chmod(t, &mut rng),
            9 => create(t, &mut rng, fid, Kind::Symlink, now).inspect(|_| {
                if let Some(n) = t.node_mut(fid) {
                    n.target = b"../x".to_vec();
                }
            }),
            _ => xattr(t, &mut rng, token),
        };
        // What a mount's commit hook reports: the files changed.
        let after = &self.peers[p].peer.local;
        let touched: Vec<FileId> = before
            .nodes
            .keys()
            .chain(after.nodes.keys())
            .filter(|f| {
                before.nodes.get(f) != after.nodes.get(f)
                    || before.names.get(f) != after.names.get(f)
            })
            .collect();
        self.peers[p].peer.mark(touched);
        if let Some(d) = done {
            if matches!(what, 0 | 2 | 3) {
                self.written.insert(token);
            }
            self.superseded.extend(gone);
            self.log(|| format!("p{}: {d}", p + 1));
        }
    }
}

fn dirs(t: &Tree) -> Vec<FileId> {
    t.nodes
        .iter()
        .filter(|(_, n)| n.meta.kind == Kind::Dir)
        .map(|(f, _)| f)
        .collect()
}

fn files(t: &Tree) -> Vec<FileId> {
    t.nodes
        .iter()
        .filter(|(_, n)| n.meta.kind == Kind::File)
        .map(|(f, _)| f)
        .collect()
}

fn a_name(rng: &mut Rng) -> Vec<u8> {
    NAMES[rng.below(NAMES.len())].as_bytes().to_vec()
}

fn create(t: &mut Tree, rng: &mut Rng, fid: FileId, kind: Kind, now: i64) -> Option<String> {
    let dir = rng.pick(&dirs(t))?;
    let key = (dir, a_name(rng));
    if t.entries.contains_key(&key) {
        return None;
    }
    t.nodes.insert(
        fid,
        Node {
            meta: Meta {
                kind,
                perm: if kind == Kind::Dir { 0o755 } else { 0o644 },
                uid: 0,
                gid: 0,
                rdev: 0,
                size: if kind == Kind::File { 4096 } else { 0 },
                mtime: Time { sec: now, nsec: 0 },
            },
            blocks: Default::default(),
            xattrs: Default::default(),
            target: Vec::new(),
            changed: Stamp::default(),
            renamed: Stamp::default(),
        }
        .into(),
    );
    t.link(key, fid);
    Some(format!("create {kind:?} {fid:x}"))
}

fn write(t: &mut Tree, rng: &mut Rng, token: u64, now: i64, gone: &mut Vec<u64>) -> Option<String> {
    let fid = rng.pick(&files(t))?;
    let n = t.node_mut(fid)?;
    let idx = rng.below(4) as u64;
    if let Some(old) = n.blocks.insert(idx, token_hash(token)) {
        gone.push(token_of(&old));
    }
    n.meta.size = n.meta.size.max((idx + 1) * 4096);
    n.meta.mtime = Time { sec: now, nsec: 0 };
    Some(format!("write {fid:x} block {idx} token {token}"))
}

fn truncate(t: &mut Tree, rng: &mut Rng, gone: &mut Vec<u64>) -> Option<String> {
    let fid = rng.pick(&files(t))?;
    let n = t.node_mut(fid)?;
    let keep = rng.below(3) as u64;
    gone.extend(n.blocks.split_off(&keep).values().map(token_of));
    n.meta.size = keep * 4096;
    Some(format!("truncate {fid:x} to {keep} blocks"))
}

fn forget(t: &mut Tree, fid: FileId, gone: &mut Vec<u64>) {
    if t.names_of(fid).next().is_none()
        && let Some(n) = t.nodes.remove(&fid)
    {
        gone.extend(n.blocks.values().map(token_of));
    }
}

fn unlink(t: &mut Tree, rng: &mut Rng, gone: &mut Vec<u64>) -> Option<String> {
    let keys: Vec<Key> = t.entries.keys().collect();
    let key = rng.pick(&keys)?;
    let fid = t.entries.get(&key).expect("in the tree");
    if t.is_dir(fid) && t.children(fid).next().is_some() {
        return None;
    }
    t.unlink(&key);
    forget(t, fid, gone);
    Some(format!("unlink {fid:x}"))
}

fn rename(t: &mut Tree, rng: &mut Rng, gone: &mut Vec<u64>) -> Option<String> {
    let keys: Vec<Key> = t.entries.keys().collect();
    let from = rng.pick(&keys)?;
    let fid = t.entries.get(&from).expect("in the tree");
    let to = (rng.pick(&dirs(t))?, a_name(rng));
    if to == from || (t.is_dir(fid) && t.is_within(to.0, fid)) {
        return None;
    }
    if let Some(old) = t.entries.get(&to) {
        if t.is_dir(old) || t.is_dir(fid) || old == fid {
            return None;
        }
        t.unlink(&to);
        forget(t, old, gone);
    }
    t.unlink(&from);
    t.link(to, fid);
    Some(format!("rename {fid:x}"))
}

fn link(t: &mut Tree, rng: &mut Rng) -> Option<String> {
    let fid = rng.pick(&files(t))?;
    let to = (rng.pick(&dirs(t))?, a_name(rng));
    if t.entries.contains_key(&to) {
        return None;
    }
    t.link(to, fid);
    Some(format!("link {fid:x}"))
}

fn chmod(t: &mut Tree, rng: &mut Rng) -> Option<String> {
    let all: Vec<FileId> = t.nodes.keys().filter(|f| *f != ROOT_ID).collect();
    let fid = rng.pick(&all)?;
    let n = t.node_mut(fid)?;
    n.meta.perm ^= 0o070;
    Some(format!("chmod {fid:x}"))
}

fn xattr(t: &mut Tree, rng: &mut Rng, token: u64) -> Option<String> {
    let fid = rng.pick(&files(t))?;
    let n = t.node_mut(fid)?;
    n.xattrs
        .insert(b"user.k".to_vec(), token.to_le_bytes().to_vec());
    Some(format!("setxattr {fid:x}"))
}
