//! One page of a store file, decoded as every reader does (header,
//! checksum, node slots and entries, allocator state): never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zippyfs::store::fuzzing::page(data));
