//! Two-endpoint harness tests.
