//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the very fuzz
//! targets cargo-fuzz runs (`fuzz/src/targets.rs`, included below), with no fuzzer: any
//! panic, in a target or in one of canaryd's tasks, fails the test and names the input.

#[path = "../../fuzz/src/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files
}

/// Runs every input of `target`'s corpus; collects the ones that panicked.
fn replay(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs failed (their panics are printed above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn config_corpus() {
    replay("config", targets::config);
}

#[test]
fn route_lookup_corpus() {
    replay("route_lookup", targets::route_lookup);
}

#[test]
fn path_corpus() {
    replay("path", targets::path);
}

#[test]
fn affinity_corpus() {
    replay("affinity", targets::affinity);
}

#[test]
fn h1_request_corpus() {
    replay("h1_request", targets::h1_request);
}
