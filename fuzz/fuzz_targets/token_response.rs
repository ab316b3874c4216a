#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proxyless::fuzzing::token_response(data);
});
