//! `cargo xtask fuzz replay`: see [`energy_fuzz::replay`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| energy_fuzz::replay::run(data));
