//! RESP requests from a client: parsed, planned or applied directly, answered.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    chc_store::server::fuzz::resp_requests(data);
});
