//! Bytes as a peer or the server would read them from a QUIC stream,
//! decoded as sync frames: a message or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((_, used))) = zippyfs::sync::wire::Msg::decode_frame(rest) {
        rest = &rest[used..];
    }
});
