//! The tracker's kernel programs: one module per program family.
//!
//! Tagging lives in `fork`, `exit` and `exec` (always attached), adoption of existing processes
//! in `adopt` (a task iterator run on demand) and the doom of a slot being killed in `doom`
//! (attached only while a kill is in progress).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod adopt;
mod cgroup_move;
mod device;
mod doom;
mod events;
mod exec;
mod exit;
mod fork;
mod free;
mod harvest;
mod kernel;
mod maps;
mod net;
mod oom;
mod pid_max;
mod policy;
mod rss;
mod slot;

mod usage;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
