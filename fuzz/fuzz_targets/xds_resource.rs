#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    proxyless::fuzzing::xds_resource(data);
});
