//! A short run of each fuzz target's entry point on every `cargo test`:
//! random and mutated inputs, a bounded number each, none may panic. The
//! long, coverage-guided runs are `cargo +nightly fuzz run <target>`
//! (`fuzz/`, README's development section).

use zippyfs::store::SplitMix64;
use zippyfs::store::fuzzing;

/// With `ZIPPYFS_FUZZ_SEEDS=DIR`, the inputs worth starting from are
/// written to `DIR/<target>/` (the fuzzers' seed corpus).
fn keep_seed(target: &str, name: &str, input: &[u8]) {
    if let Some(dir) = std::env::var_os("ZIPPYFS_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(dir.join(name), input).expect("seed");
    }
}

fn bytes(rng: &mut SplitMix64, max: u64) -> Vec<u8> {
    let n = rng.below(max + 1) as usize;
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// Flips a few bytes of `base`.
fn mutate(rng: &mut SplitMix64, base: &[u8], flips: u64) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(flips) {
        if b.is_empty() {
            break;
        }
        let at = rng.below(b.len() as u64) as usize;
        b[at] = rng.next_u64() as u8;
    }
    b
}

#[test]
fn store_pages_and_slots_of_any_bytes_decode_without_a_panic() {
    let mut rng = SplitMix64(11);
    let image = fuzzing::seed_image();
    let pages: Vec<&[u8]> = image.chunks(4096).collect();
    for (i, p) in pages.iter().enumerate() {
        keep_seed("store_page", &format!("page{i}"), p);
        if i < 2 {
            keep_seed("store_slot", &format!("slot{i}"), &p[..128]);
        }
    }
    for i in 0..20_000u64 {
        let input = if i % 2 == 0 {
            bytes(&mut rng, 4200)
        } else {
            // A real page, a few bytes changed, its checksum made to hold.
            let p = pages[rng.below(pages.len() as u64) as usize];
            let mut m = mutate(&mut rng, p, 8);
            m[0] |= 0x80;
            m
        };
        fuzzing::page(&input);
        fuzzing::slot(&input);
    }
}

#[test]
fn damaged_store_images_open_or_fail_without_a_panic() {
    let mut rng = SplitMix64(12);
    let image = fuzzing::seed_image();
    // The seed itself is a store of three versions.
    let sim = zippyfs::store::SimBackend::from_image(&image, 1 << 24).expect("image");
    let opts = zippyfs::store::StoreOptions {
        map_size: 1 << 26,
        ..Default::default()
    };
    let store = zippyfs::store::Store::open_backend(Box::new(sim), opts).expect("seed opens");
    assert_eq!(store.versions().len(), 3);
    drop(store);
    keep_seed("store_image", "seed", &image);
    fuzzing::image(&image);
    for _ in 0..300 {
        fuzzing::image(&mutate(&mut rng, &image, 16));
    }
    for _ in 0..50 {
        let cut = rng.below(image.len() as u64) as usize;
        fuzzing::image(&image[..cut]);
    }
}

#[test]
fn fuse_requests_of_any_bytes_get_an_answer_without_a_panic() {
    let target = zippyfs::fuse::fuzzing::Target::new();
    let mut rng = SplitMix64(13);
    let mut answers = std::collections::BTreeMap::new();
    for i in 0..20_000u64 {
        let body = bytes(&mut rng, 300);
        let mut req = Vec::with_capacity(40 + body.len());
        let len = if i % 10 == 0 {
            rng.next_u64() as u32
        } else {
            (40 + body.len()) as u32
        };
        req.extend_from_slice(&len.to_le_bytes());
        // Opcodes the table knows, mostly, and node ids that exist, mostly.
        let opcode = if i % 8 == 0 {
            rng.next_u64() as u32
        } else {
            rng.below(52) as u32
        };
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&i.to_le_bytes());
        let node = if i % 8 == 1 {
            rng.next_u64()
        } else {
            1 + rng.below(12)
        };
        req.extend_from_slice(&node.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]);
        req.extend_from_slice(&body);
        if i % 16 == 2 {
            req.truncate(rng.below(req.len() as u64) as usize);
        }
        let answer = target.run(&req);
        if answer == Some(0) && answers.get(&answer).is_none_or(|&n| n < 200) {
            keep_seed("fuse_request", &format!("req{i}"), &req);
        }
        *answers.entry(answer).or_insert(0u32) += 1;
    }
    // Some requests did what they asked (the inputs reach the core).
    assert!(
        answers.get(&Some(0)).is_some_and(|&n| n > 100),
        "{answers:?}"
    );
}
