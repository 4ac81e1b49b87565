//! canaryd's fuzz targets. The targets live in `targets.rs`, which the corpus replay test
//! (`tests/e2e/fuzz_corpus.rs`) includes as well, so the fuzzer and `cargo test` run the
//! very same code over the same inputs.

#[path = "targets.rs"]
pub mod targets;
