//! `cargo xtask fuzz otlp`: see [`energy_fuzz::otlp`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| energy_fuzz::otlp::run(data));
