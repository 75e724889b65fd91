//! A whole store file: opened, every version read, fsck: errors, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zippyfs::store::fuzzing::image(data));
