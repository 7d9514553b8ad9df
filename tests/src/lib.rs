//! Helpers shared by the integration tests live in the test files; this crate has no library code.
