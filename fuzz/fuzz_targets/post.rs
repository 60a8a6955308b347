//! Fuzz target: see `tcpchat::protocol::invariants::check_post`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tcpchat::protocol::invariants::check_post(data);
});
