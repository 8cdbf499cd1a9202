//! The root-job guard's system-call filter: what a job that keeps uid 0 may not call, because
//! it would let it untrack itself or others (unpin or detach the tracker's programs, load its
//! own BPF, load kernel code, trace processes outside its slot).
//!
//! Denied with EPERM: `bpf`; the whole mount family (`mount`, `umount`/`umount2`,
//! `move_mount`, `open_tree`, `open_tree_attr`, `fsopen`, `fsconfig`, `fsmount`, `fspick`,
//! `mount_setattr`, `pivot_root`) outright, since seccomp sees only pointers, not the paths
//! they point to, so "only on bpffs" cannot be told apart here; `setns` (a way back into the
//! machine's mount namespace, where bpffs is); `ptrace` outright (which processes are in the
//! slot cannot be told from the arguments either); `open_by_handle_at`; `init_module`,
//! `finit_module`, `delete_module`; `kexec_load`, `kexec_file_load`.
//!
//! Every ABI an x86-64 process can use is covered: the native one, x32 (the same
//! `AUDIT_ARCH_X86_64` with bit 30 set in the number, and its own numbers for `ptrace` and
//! `kexec_load`) and i386 (`int 0x80`, `AUDIT_ARCH_I386`, other numbers). Any other
//! architecture value kills the process. Hand-assembled rather than built with a crate: the
//! filter is a deny list of a few dozen comparisons, and seccompiler (pure Rust) builds one
//! architecture per filter, killing the others, while libseccomp needs a C library that is
//! not installed everywhere; the unit tests below run the program through an interpreter of
//! the four instructions it uses, and the kernel tests run it for real.
use std::io;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `struct seccomp_data`: nr at 0, arch at 4.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// x86-64 numbers (also the x32 ones, with `X32_SYSCALL_BIT`).
const X86_64: &[u32] = &[
    321, // bpf
    165, // mount
    166, // umount2
    428, // open_tree
    429, // move_mount
    430, // fsopen
    431, // fsconfig
    432, // fsmount
    433, // fspick
    442, // mount_setattr
    467, // open_tree_attr
    155, // pivot_root
    308, // setns
    101, // ptrace
    304, // open_by_handle_at
    175, // init_module
    313, // finit_module
    176, // delete_module
    246, // kexec_load
    320, // kexec_file_load
];

/// x32's own numbers for calls whose x86-64 entry it does not share.
const X32_ONLY: &[u32] = &[
    521, // ptrace
    528, // kexec_load
];

const I386: &[u32] = &[
    357, // bpf
    21,  // mount
    22,  // umount
    52,  // umount2
    428, // open_tree
    429, // move_mount
    430, // fsopen
    431, // fsconfig
    432, // fsmount
    433, // fspick
    442, // mount_setattr
    467, // open_tree_attr
    217, // pivot_root
    346, // setns
    26,  // ptrace
    342, // open_by_handle_at
    128, // init_module
    350, // finit_module
    129, // delete_module
    283, // kexec_load
];

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

/// The filter program.
pub fn root_guard_filter() -> Vec<libc::sock_filter> {
    let native: Vec<u32> = X86_64
        .iter()
        .copied()
        .chain(X86_64.iter().chain(X32_ONLY).map(|n| n | X32_SYSCALL_BIT))
        .collect();
    // Layout: [arch checks] [native block] [i386 block] DENY KILL. Jumps are forward and
    // relative; the blocks are short enough for the 8-bit offsets (checked below).
    let native_len = 2 + native.len(); // ld nr, the comparisons, ret allow
    let i386_len = 2 + I386.len();
    let mut p = vec![stmt(LD_W_ABS, OFF_ARCH)];
    // To the native block, else to the i386 check right after it.
    p.push(libc::sock_filter { code: JEQ_K, jt: 0, jf: off(native_len), k: AUDIT_ARCH_X86_64 });
    block(&mut p, &native, i386_len + 1);
    // The i386 check: its block, else past it and past DENY to KILL.
    p.push(libc::sock_filter { code: JEQ_K, jt: 0, jf: off(i386_len + 1), k: AUDIT_ARCH_I386 });
    block(&mut p, I386, 0);
    p.push(stmt(RET_K, RET_ERRNO | libc::EPERM as u32));
    p.push(stmt(RET_K, RET_KILL_PROCESS));
    p
}

/// `ld nr; jeq n → DENY ...; ret allow`, where DENY is `after` instructions past the block.
fn block(p: &mut Vec<libc::sock_filter>, numbers: &[u32], after: usize) {
    p.push(stmt(LD_W_ABS, OFF_NR));
    for (i, &n) in numbers.iter().enumerate() {
        // From comparison i: the rest of the comparisons, the ret, then `after`.
        let to_deny = numbers.len() - i - 1 + 1 + after;
        p.push(libc::sock_filter { code: JEQ_K, jt: off(to_deny), jf: 0, k: n });
    }
    p.push(stmt(RET_K, RET_ALLOW));
}

fn off(n: usize) -> u8 {
    u8::try_from(n).expect("the seccomp filter's blocks fit 8-bit jumps")
}

/// Install `prog` on the calling thread (between fork and exec: no allocation). The caller
/// holds CAP_SYS_ADMIN (a root job), so no `no_new_privs` is needed.
///
/// # Safety
/// Only system calls; `prog` must stay alive for the call.
pub unsafe fn install(prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
    // SAFETY: the kernel copies the program; `fprog` points at live memory.
    let rc = unsafe {
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const fprog, 0, 0)
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's checker would refuse a program that jumps past its end; this interpreter
    /// does the same, for the four instructions the filter uses.
    fn run(p: &[libc::sock_filter], arch: u32, nr: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = p[pc];
            match i.code {
                LD_W_ABS => a = if i.k == OFF_ARCH { arch } else { nr },
                JEQ_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf });
                }
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
            pc += 1;
            assert!(pc < p.len(), "jumped past the end");
        }
    }

    const DENY: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn every_listed_call_is_denied_on_every_abi() {
        let p = root_guard_filter();
        assert!(p.len() < 4096);
        for &n in X86_64 {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, n), DENY, "x86-64 {n}");
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, n | X32_SYSCALL_BIT), DENY, "x32 {n}");
        }
        for &n in X32_ONLY {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, n | X32_SYSCALL_BIT), DENY, "x32 {n}");
        }
        for &n in I386 {
            assert_eq!(run(&p, AUDIT_ARCH_I386, n), DENY, "i386 {n}");
        }
    }

    #[test]
    fn everything_else_is_allowed_and_unknown_arches_killed() {
        let p = root_guard_filter();
        // read, write, openat, execve, clone3; i386 read, write, execve.
        for n in [0, 1, 257, 59, 435] {
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, n), RET_ALLOW, "x86-64 {n}");
            assert_eq!(run(&p, AUDIT_ARCH_X86_64, n | X32_SYSCALL_BIT), RET_ALLOW, "x32 {n}");
        }
        for n in [3, 4, 11] {
            assert_eq!(run(&p, AUDIT_ARCH_I386, n), RET_ALLOW, "i386 {n}");
        }
        // i386's mount (21) is x86-64's access: allowed there.
        assert_eq!(run(&p, AUDIT_ARCH_X86_64, 21), RET_ALLOW);
        assert_eq!(run(&p, 0xc000_00b7, 0), RET_KILL_PROCESS, "aarch64 on x86-64");
    }
}
