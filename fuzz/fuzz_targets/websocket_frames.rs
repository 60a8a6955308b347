//! Fuzz target: see `tcpchat::protocol::invariants::check_websocket_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tcpchat::protocol::invariants::check_websocket_frames(data);
});
