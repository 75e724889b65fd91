//! A commit slot (the store file's header), decoded and checked: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zippyfs::store::fuzzing::slot(data));
