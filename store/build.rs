//! Generates the etcd v3 gRPC messages, clients and servers from `proto/`. Pure Rust
//! (`protox` parses the .proto files), so a fresh machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/rpc.proto", "proto/kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keys and values stay `Bytes`: the face hands them to the store without copying.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
