//! The workspace root package. Its `tests/` hold the cross-crate tests.
