//! `cargo xtask fuzz procfs`: see [`energy_fuzz::procfs`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| energy_fuzz::procfs::run(data));
