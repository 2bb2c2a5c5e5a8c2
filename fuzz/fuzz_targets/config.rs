//! `cargo xtask fuzz config`: see [`energy_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| energy_fuzz::config::run(data));
