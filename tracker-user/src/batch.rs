//! `BPF_MAP_LOOKUP_BATCH` on a hash map, which aya does not wrap.
use std::{io, mem::MaybeUninit};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries fetched per call: enough that no hash bucket overflows it (which would be ENOSPC).
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Read every entry of the hash map `fd` whose keys and values are `K` and `V`.
pub fn lookup_all<K: Copy, V: Copy>(fd: i32) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut keys: Vec<MaybeUninit<K>> = vec![MaybeUninit::uninit(); CHUNK];
    let mut values: Vec<MaybeUninit<V>> = vec![MaybeUninit::uninit(); CHUNK];
    // The hash map's cursor is a bucket index (u32), opaque to us.
    let mut cursor_in = 0u64;
    let mut cursor_out = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const cursor_in) as u64
            },
            out_batch: (&raw mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attr points at buffers of CHUNK keys and values that outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        let n = attr.count as usize;
        for i in 0..n.min(CHUNK) {
            // SAFETY: the kernel filled the first `count` slots.
            out.push(unsafe { (keys[i].assume_init(), values[i].assume_init()) });
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
        cursor_in = cursor_out;
        first = false;
    }
}
