//! Native protocol frames from a client, applied to a shard, the log replayed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chc_store::server::fuzz::native_frames(data);
});
