//! Compiles proto/ with a vendored protoc, so a fresh machine needs no system
//! protobuf compiler. A PROTOC in the environment still wins.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Not emitted by the generator: without it an edited .proto is not rebuilt.
    println!("cargo:rerun-if-changed=../../proto");
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure().compile_with_config(
        config,
        &["../../proto/raft.proto", "../../proto/admin.proto"],
        &["../../proto"],
    )?;
    Ok(())
}
