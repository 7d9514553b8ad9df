//! Code generated from `proto/`: nothing else lives here. Conversions between
//! these types and Tandem's domain types belong to the crates that own them.

pub mod raft {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("tandem.raft.v1");
}

pub mod admin {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("tandem.admin.v1");
}
