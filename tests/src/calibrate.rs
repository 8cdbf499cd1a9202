//! Empty programs for the benchmark: `r0 = 0; exit`, attached to the same tracepoints as the
//! tracker's own, so that the kernel's per-call statistics show, under the same conditions
//! (this VM's steal time included), what calling any program there costs; the tracker's
//! programs are measured against that floor. Loaded with raw `bpf()` calls: two instructions
//! do not need an ELF object.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;

/// The first fields of `union bpf_attr` for BPF_PROG_LOAD, as in the kernel's uapi.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    _rest: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct RawTpOpen {
    name: u64,
    prog_fd: u32,
    _pad: u32,
    cookie: u64,
}

/// An empty program attached to a BTF tracepoint, detached on drop.
pub struct EmptyProgram {
    pub name: String,
    _prog: OwnedFd,
    _link: OwnedFd,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a correctly laid out, zero-padded bpf_attr of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl EmptyProgram {
    /// Attach an empty program to tracepoint `tp` (e.g. `sched_process_fork`), named `name`
    /// (at most 15 bytes) so that its statistics can be found.
    pub fn attach(btf: &btf_rs::Btf, tp: &str, name: &str) -> io::Result<Self> {
        let id = btf
            .resolve_ids_by_name(&format!("btf_trace_{tp}"))
            .ok()
            .and_then(|ids| ids.first().copied())
            .ok_or_else(|| io::Error::other(format!("no BTF for tracepoint {tp}")))?;
        // r0 = 0; exit
        let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let mut load = ProgLoad {
            prog_type: BPF_PROG_TYPE_TRACING,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: c"GPL".as_ptr() as u64,
            prog_name,
            expected_attach_type: BPF_TRACE_RAW_TP,
            attach_btf_id: id,
            ..Default::default()
        };
        let prog = bpf(BPF_PROG_LOAD, &mut load)?;
        let mut open = RawTpOpen { prog_fd: prog.as_raw_fd() as u32, ..Default::default() };
        let link = bpf(BPF_RAW_TRACEPOINT_OPEN, &mut open)?;
        Ok(Self { name: name.to_owned(), _prog: prog, _link: link })
    }
}
