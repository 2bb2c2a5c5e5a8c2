//! eBPF programs of the energy agent.
//!
//! Scheduler accounting (`sched`): exact on-CPU nanoseconds per thread and CPU, summed
//! in the kernel, with exit/exec/fork records on a ring buffer.
//!
//! GPU-driver activity (`gpu`): CUDA driver calls per thread (uprobes on libcuda.so,
//! one program for every entry point) and NVIDIA ioctls.
//!
//! Minimum kernel version: 5.19 (`bpf_map_lookup_percpu_elem`); ring buffers need 5.8.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap in `core::sync::atomic` (its spec predates BPF
// v3's atomics); the intrinsics emit the instructions the cache's slot hand-over needs.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod gpu;
mod maps;
mod sched;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Some helpers (`bpf_probe_read*`, ring buffers) need a GPL-compatible licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
