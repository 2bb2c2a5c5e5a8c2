//! `cargo xtask fuzz sysfs`: see [`energy_fuzz::sysfs`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| energy_fuzz::sysfs::run(data));
