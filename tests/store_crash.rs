//! Crash tests: the store runs random transactions on a device that loses
//! power at a random point (`SimBackend`), keeping a random subset of the
//! writes it had not synced, some torn. Reopened from what the disk holds,
//! the store must be at the last commit that returned (or at the commit that
//! was in flight, complete), with every kept version intact, a clean fsck,
//! and must go on working: new commits reuse space without harming old
//! versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use zippyfs::store::{Retention, SimBackend, SplitMix64, Store, StoreOptions};

type Model = BTreeMap<Vec<u8>, (Vec<u8>, Option<Vec<u8>>)>;

const KEEP: usize = 4;
const DEVICE: u64 = 1 << 30;

fn opts() -> StoreOptions {
    StoreOptions {
        map_size: DEVICE,
        retention: Retention::last(KEEP),
        // Small, so each simulated crash copies a small image; the reserve
        // has its own tests (store_space).
        reserve: 256 << 10,
        ..StoreOptions::default()
    }
}

fn open(dev: Arc<SimBackend>) -> zippyfs::store::StoreResult<Store> {
    Store::open_backend(Box::new(dev), opts())
}

fn bytes(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    let seed = rng.next_u64() as u8;
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

/// One random transaction applied to `model`; `Err` once the device is gone.
fn transaction(store: &Store, rng: &mut SplitMix64, model: &mut Model) -> Result<u64, (u64, bool)> {
    let mut t = store.begin_write().map_err(|_| (0, false))?;
    let id = t.version();
    let mut next = model.clone();
    for _ in 0..1 + rng.below(40) {
        let k = format!("key{:04}", rng.below(400)).into_bytes();
        let r = match rng.below(10) {
            0..=4 => {
                let len = if rng.below(8) == 0 {
                    1000 + rng.below(9000)
                } else {
                    rng.below(150)
                };
                let v = bytes(rng, len as usize);
                next.insert(k.clone(), (v.clone(), None));
                t.put(&k, &v)
            }
            5..=6 => {
                let len = 1 + rng.below(9000) as usize;
                let data = bytes(rng, len);
                let v = bytes(rng, 8);
                next.insert(k.clone(), (v.clone(), Some(data.clone())));
                t.write_extent(&data)
                    .and_then(|e| t.put_with_extent(&k, &v, e))
            }
            _ => {
                next.remove(&k);
                t.delete(&k).map(|_| ())
            }
        };
        if r.is_err() {
            return Err((id, false));
        }
    }
    match t.commit("crash test") {
        Ok(info) => {
            *model = next;
            Ok(info.id)
        }
        Err(_) => {
            // The commit may or may not have reached the disk.
            *model = next;
            Err((id, true))
        }
    }
}

fn read_version(store: &Store, v: u64) -> Model {
    let snap = store.snapshot(v).unwrap();
    let mut got = Model::new();
    for item in snap.range::<std::ops::RangeFull>(..).unwrap() {
        let (k, e) = item.unwrap();
        let ext = e.extent.map(|x| snap.read_extent(&x).unwrap().to_vec());
        got.insert(k.to_vec(), (e.value.to_vec(), ext));
    }
    got
}

fn check(store: &Store, history: &BTreeMap<u64, Model>, seed: u64) {
    let kept: Vec<u64> = store.versions().iter().map(|v| v.id).collect();
    let want: Vec<u64> = history.keys().rev().take(KEEP).rev().copied().collect();
    assert_eq!(kept, want, "seed {seed}: kept versions");
    for v in kept {
        assert!(
            read_version(store, v) == history[&v],
            "seed {seed}: version {v} differs"
        );
    }
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "seed {seed}: {report}");
}

fn crash_once(seed: u64) -> &'static str {
    let mut rng = SplitMix64(seed);
    let dev = Arc::new(SimBackend::new(DEVICE).unwrap());
    let mut store = open(dev.clone()).unwrap();
    let mut model = Model::new();
    let mut history: BTreeMap<u64, Model> = BTreeMap::new();
    for _ in 0..rng.below(6) {
        let id = transaction(&store, &mut rng, &mut model).unwrap();
        history.insert(id, model.clone());
    }
    dev.crash_after(rng.below(120));
    let mut in_flight = None;
    let mut outcome = "no crash";
    for _ in 0..40 {
        if rng.below(12) == 0 {
            // A clean close and reopen; the close itself writes and may crash.
            if store.close().is_err() {
                outcome = "crash in close";
                store = open(Arc::new(SimBackend::new(DEVICE).unwrap())).unwrap();
                break;
            }
            match open(dev.clone()) {
                Ok(s) => store = s,
                Err(_) => {
                    outcome = "crash in open";
                    store = open(Arc::new(SimBackend::new(DEVICE).unwrap())).unwrap();
                    break;
                }
            }
            continue;
        }
        match transaction(&store, &mut rng, &mut model) {
            Ok(id) => {
                history.insert(id, model.clone());
            }
            Err((id, in_commit)) => {
                if in_commit {
                    in_flight = Some((id, model.clone()));
                    outcome = "crash in commit";
                } else {
                    outcome = "crash in transaction";
                }
                break;
            }
        }
    }
    drop(store);

    let image = dev.crash_image(&mut rng);
    let dev = Arc::new(SimBackend::from_image(&image, DEVICE).unwrap());
    let store =
        open(dev.clone()).unwrap_or_else(|e| panic!("seed {seed}: reopen after crash: {e}"));
    let last = history.keys().next_back().copied();
    let at = store.latest_version();
    let discarded = store.open_report().discarded_commit.is_some();
    if at != last {
        let (id, m) = in_flight
            .take()
            .unwrap_or_else(|| panic!("seed {seed}: opened at {at:?}, last commit {last:?}"));
        assert_eq!(
            at,
            Some(id),
            "seed {seed}: opened neither at the last commit nor the one in flight"
        );
        history.insert(id, m);
        outcome = "crash in commit, commit survived";
    }
    if discarded {
        outcome = "crash in commit, slot on disk without all its pages";
    }
    check(&store, &history, seed);

    // Life goes on: new commits reuse the space the rebuild found free.
    let mut rng = SplitMix64(seed ^ 0xdead);
    let mut model = history.values().next_back().cloned().unwrap_or_default();
    for _ in 0..8 {
        let id = transaction(&store, &mut rng, &mut model).unwrap();
        history.insert(id, model.clone());
    }
    check(&store, &history, seed);
    outcome
}

#[test]
fn store_opens_at_the_last_commit_after_thousands_of_power_losses() {
    let seeds: u64 = std::env::var("ZIPPY_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    for seed in 0..seeds {
        *outcomes.entry(crash_once(seed)).or_default() += 1;
    }
    println!("{seeds} crash points: {outcomes:?}");
    // The crash points must really land in transactions and commits.
    assert!(
        outcomes.get("crash in commit").copied().unwrap_or(0)
            + outcomes
                .get("crash in commit, commit survived")
                .copied()
                .unwrap_or(0)
            > seeds / 10
    );
}

#[test]
fn torn_newest_slot_falls_back_to_the_previous_commit() {
    let dev = Arc::new(SimBackend::new(DEVICE).unwrap());
    let store = open(dev.clone()).unwrap();
    let mut rng = SplitMix64(1);
    let mut model = Model::new();
    let mut history = BTreeMap::new();
    for _ in 0..5 {
        let id = transaction(&store, &mut rng, &mut model).unwrap();
        history.insert(id, model.clone());
    }
    drop(store);
    // Damage the newest slot (the clean close wrote it).
    let mut image = dev.live_image();
    let newest = (0..2)
        .max_by_key(|&i| {
            u64::from_le_bytes(image[i * 4096 + 16..i * 4096 + 24].try_into().unwrap())
        })
        .unwrap();
    image[newest * 4096 + 40] ^= 0xff;
    let store = open(Arc::new(SimBackend::from_image(&image, DEVICE).unwrap())).unwrap();
    check(&store, &history, 0);
}
