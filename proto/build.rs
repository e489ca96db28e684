//! Generates the protobuf and gRPC code from `proto/` with `protox`, a protobuf
//! compiler written in Rust, so no machine needs `protoc`. The compiled descriptor set
//! is also written to `OUT_DIR` for gRPC reflection.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "proto/io/cloudevents/v1/cloudevents.proto",
    "proto/cemesh/v1/publisher.proto",
    "proto/cemesh/v1/admin.proto",
    "proto/externalscaler.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("cemesh_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // `bytes` fields as `bytes::Bytes`: decoding from a `Bytes` buffer slices the
        // data instead of copying it.
        .bytes(".")
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
