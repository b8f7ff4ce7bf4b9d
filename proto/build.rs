fn main() {
    println!("cargo:rerun-if-changed=proto/store.proto");
    let mut cfg = prost_build::Config::new();
    // Byte fields decode as `Bytes` slices of the received frame: no copy per operation.
    cfg.bytes(["."]);
    if let Err(e) = cfg.compile_protos(&["proto/store.proto"], &["proto"]) {
        panic!(
            "compiling proto/store.proto failed: {e}\n\
             prost-build needs `protoc` (Debian: apt-get install protobuf-compiler, \
             or set PROTOC to its path)"
        );
    }
}
