//! Shared setup for the benchmarks lives in the bench files; this crate has no library code.
