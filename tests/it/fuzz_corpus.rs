//! Replays every input in the fuzz corpus (`fuzz/corpus/<target>/`) through the same
//! invariant checks the fuzz targets run, so what the fuzzer once found stays fixed.
//! To grow the corpus: `cd fuzz && cargo fuzz run --sanitizer none <target>`.

use std::path::Path;

use tcpchat::protocol::invariants;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its invariants", path.display());
        count += 1;
    }
    assert!(count > 0, "no corpus in {}", dir.display());
}

#[test]
fn the_handshake_corpus_keeps_its_invariants() {
    replay("handshake", invariants::check_handshake);
}

#[test]
fn the_line_framer_corpus_keeps_its_invariants() {
    replay("line_framer", invariants::check_line_framer);
}

#[test]
fn the_post_corpus_keeps_its_invariants() {
    replay("post", invariants::check_post);
}

#[test]
fn the_websocket_frames_corpus_keeps_its_invariants() {
    replay("websocket_frames", invariants::check_websocket_frames);
}
