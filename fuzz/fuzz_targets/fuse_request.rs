//! Requests as read from `/dev/fuse`, decoded and run against a real
//! filesystem core on a store in a temporary directory (the state carries
//! over from input to input, as on a live mount): errors, never a panic.
#![no_main]

use zippyfs::fuse::fuzzing::Target;

static TARGET: std::sync::LazyLock<Target> = std::sync::LazyLock::new(Target::new);

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    TARGET.run(data);
});
