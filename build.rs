//! Compiles the gRPC API with a vendored protoc, so a fresh machine needs no system protoc.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/degre/v1/reranker.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptor = PathBuf::from(env::var("OUT_DIR")?).join("degre_descriptor.bin");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .codec_path("crate::api::codec::RerankCodec")
        .file_descriptor_set_path(&descriptor)
        .compile_with_config(config, &protos, &["proto"])?;
    // Canonical proto3 JSON for every message (`degre rerank`, `degre model-info`):
    // lowerCamelCase names out, either name in, 64-bit integers as strings, defaults shown.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor)?)?
        .emit_fields()
        .build(&[".degre.v1"])?;
    Ok(())
}
