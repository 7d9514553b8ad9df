//! ESP dataplane, sans-IO (RFC 4303, RFC 3948).
#![forbid(unsafe_code)]
