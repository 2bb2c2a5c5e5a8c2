//! `cargo xtask fuzz carbon`: see [`energy_fuzz::carbon`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| energy_fuzz::carbon::run(data));
