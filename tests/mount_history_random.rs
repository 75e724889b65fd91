//! `zippyfs diff` and `zippyfs log` against a model of the operations that
//! were applied: random creates, writes, renames and deletes on a real mount,
//! one version per step; then diff of random version pairs and log of every
//! name must say what the model says.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use zippyfs::store::SplitMix64;

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A file in the model: identity, contents, and the step that last touched
/// its inode (a write or a rename changes its ctime).
#[derive(Clone, Debug)]
struct File {
    id: u64,
    data: Vec<u8>,
}

type State = BTreeMap<String, File>;

fn strings(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn diff_and_log_agree_with_the_operations_applied() {
    if !common::fuse_or_skip() {
        return;
    }
    let store = tempfile::tempdir().expect("store");
    let m = common::Mounted::start(store.path(), &[]);
    let root = m.path().to_path_buf();
    let mut rng = SplitMix64(2026);
    let mut state = State::new();
    let mut next_id = 0u64;
    // (version, state, inodes touched by the step that made it)
    let mut steps: Vec<(u64, State, BTreeSet<u64>)> = Vec::new();
    for step in 0..40u64 {
        let name = NAMES[rng.below(5) as usize].to_string();
        let mut touched = BTreeSet::new();
        match rng.below(4) {
            0 | 1 => {
                // Create or overwrite (same inode).
                let data = format!("step {step} {}", rng.next_u64()).into_bytes();
                std::fs::write(root.join(&name), &data).expect("write");
                let f = state.entry(name).or_insert_with(|| {
                    next_id += 1;
                    File {
                        id: next_id,
                        data: Vec::new(),
                    }
                });
                f.data = data;
                touched.insert(f.id);
            }
            2 => {
                let to = NAMES[rng.below(5) as usize].to_string();
                if let Some(f) = state.get(&name).cloned()
                    && to != name
                {
                    std::fs::rename(root.join(&name), root.join(&to)).expect("rename");
                    state.remove(&name);
                    touched.insert(f.id);
                    state.insert(to, f);
                } else {
                    continue;
                }
            }
            _ => {
                if state.remove(&name).is_some() {
                    std::fs::remove_file(root.join(&name)).expect("unlink");
                } else {
                    continue;
                }
            }
        }
        common::fsync_root(&root);
        let versions: Vec<u64> = common::version_ids(&root);
        steps.push((*versions.last().expect("a version"), state.clone(), touched));
    }

    // diff between random pairs of steps.
    for _ in 0..25 {
        let (i, j) = (
            rng.below(steps.len() as u64) as usize,
            rng.below(steps.len() as u64) as usize,
        );
        let (i, j) = (i.min(j), i.max(j));
        let (v1, old, _) = &steps[i];
        let (v2, new, _) = &steps[j];
        let touched: BTreeSet<u64> = steps[i + 1..=j]
            .iter()
            .flat_map(|s| s.2.iter().copied())
            .collect();
        let added_ids: BTreeMap<u64, String> = new
            .iter()
            .filter(|(p, _)| !old.contains_key(*p))
            .map(|(p, f)| (f.id, p.clone()))
            .collect();
        let (mut want_removed, mut want_renamed, mut want_modified) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for (p, f) in old {
            match new.get(p) {
                None => match added_ids.get(&f.id) {
                    Some(to) => {
                        want_renamed.insert((p.clone(), to.clone()));
                    }
                    None => {
                        want_removed.insert(p.clone());
                    }
                },
                Some(g) => {
                    if g.id != f.id || g.data != f.data || touched.contains(&g.id) {
                        want_modified.insert(p.clone());
                    }
                }
            }
        }
        let renamed_to: BTreeSet<String> = want_renamed.iter().map(|(_, t)| t.clone()).collect();
        let want_added: BTreeSet<String> = new
            .keys()
            .filter(|p| !old.contains_key(*p) && !renamed_to.contains(*p))
            .cloned()
            .collect();
        let d = common::run_json(&["diff".into(), v1.to_string(), v2.to_string()], &root);
        let ctx = format!("diff {v1} {v2}: {d}");
        assert_eq!(strings(&d["added"]), want_added, "{ctx}");
        assert_eq!(strings(&d["removed"]), want_removed, "{ctx}");
        assert_eq!(strings(&d["modified"]), want_modified, "{ctx}");
        let renamed: BTreeSet<(String, String)> = d["renamed"]
            .as_array()
            .expect("renamed")
            .iter()
            .map(|r| {
                (
                    r[0].as_str().expect("from").to_string(),
                    r[1].as_str().expect("to").to_string(),
                )
            })
            .collect();
        assert_eq!(renamed, want_renamed, "{ctx}");
    }

    // log of every name: the steps where the name appeared, changed or went.
    for name in NAMES {
        let mut want = Vec::new();
        let mut prev: Option<&File> = None;
        for (v, st, touched) in &steps {
            let now = st.get(name);
            let what = match (prev, now) {
                (None, Some(_)) => Some("created"),
                (Some(_), None) => Some("deleted"),
                (Some(a), Some(b))
                    if a.id != b.id || a.data != b.data || touched.contains(&b.id) =>
                {
                    Some("modified")
                }
                _ => None,
            };
            if let Some(w) = what {
                want.push((*v, w.to_string()));
            }
            prev = now;
        }
        let log = common::run_json(&["log", name], &root);
        let got: Vec<(u64, String)> = log
            .as_array()
            .expect("array")
            .iter()
            .map(|e| {
                (
                    e["id"].as_u64().expect("id"),
                    e["change"].as_str().expect("change").to_string(),
                )
            })
            // A change is the step's whose version is the first at or after
            // it: a background commit may take a step's change before that
            // step's fsync commits (then the step's own version is a later
            // one, with nothing of it). Versions before the first step
            // (mkfs) carry no change of their own.
            .filter_map(|(v, c)| {
                let s = steps.iter().find(|s| s.0 >= v)?;
                Some((s.0, c))
            })
            .collect();
        // A step split over two commits (a file made, then written) shows
        // twice: its first change is the step's.
        let mut got = got;
        got.dedup_by_key(|(v, _)| *v);
        assert_eq!(got, want, "log {name}");
    }
    assert!(m.unmount().success());
}
