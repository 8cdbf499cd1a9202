//! Kernel struct offsets from the running kernel's BTF.
//!
//! Rust eBPF programs carry no CO-RE relocations, so the programs read kernel fields at offsets
//! that user space resolves here, by name, from `/sys/kernel/btf/vmlinux`, and hands them over
//! in the frozen `.rodata`. A field that is missing or of an unexpected size is a load error
//! naming it, never a silently wrong number; and since the programs read fields with plain
//! loads, the verifier checks each offset against the kernel's own BTF type as well.
use std::path::Path;

use btf_rs::{Btf, Type};
use tracker_common::{IoCounters, KernelOffsets};

use crate::error::{Error, Result};

/// Resolve every offset the programs need from the BTF at `path`.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets> {
    if !path.exists() {
        return Err(Error::NoBtf(path.into()));
    }
    let btf = Btf::from_file(path)
        .map_err(|e| Error::Btf(format!("cannot parse {}: {e}", path.display())))?;
    let r = Resolver { btf: &btf };
    let task = "task_struct";
    let pid = r.field(task, &["pid"], 4)?;
    let tgid = r.field(task, &["tgid"], 4)?;
    // The programs read the whole struct at once into `IoCounters`: same fields, same order.
    let io = "task_io_accounting";
    let io_fields = ["rchar", "wchar", "syscr", "syscw", "read_bytes", "write_bytes"];
    for (i, f) in io_fields.iter().chain(["cancelled_write_bytes"].iter()).enumerate() {
        let at = r.field(io, &[f], 8)?;
        if at as usize != i * 8 {
            return Err(Error::Btf(format!("{io}.{f} is at {at}, not {}", i * 8)));
        }
    }
    // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Ok(KernelOffsets {
        task_pid: pid,
        task_tgid: tgid,
        task_flags: r.field(task, &["flags"], 4)?,
        task_real_parent: r.field(task, &["real_parent"], 8)?,
        task_start_boottime: r.field(task, &["start_boottime"], 8)?,
        task_exit_code: r.field(task, &["exit_code"], 4)?,
        task_state: r.field(task, &["__state"], 4)?,
        task_mm: r.field(task, &["mm"], 8)?,
        task_signal: r.field(task, &["signal"], 8)?,
        task_utime: r.field(task, &["utime"], 8)?,
        task_stime: r.field(task, &["stime"], 8)?,
        task_sum_exec: r.field(task, &["se", "sum_exec_runtime"], 8)?,
        task_ioac: r.field(task, &["ioac"], size_of::<IoCounters>())?,
        task_min_flt: r.field(task, &["min_flt"], 8)?,
        task_maj_flt: r.field(task, &["maj_flt"], 8)?,
        signal_maxrss: r.field("signal_struct", &["maxrss"], 8)?,
        mm_rss_stat: r.field("mm_struct", &["rss_stat"], 4 * r.struct_size("percpu_counter")?)?,
        mm_owner: r.field("mm_struct", &["owner"], 8)?,
        mm_hiwater_rss: r.field("mm_struct", &["hiwater_rss"], 8)?,
        percpu_counter_count: r.field("percpu_counter", &["count"], 8)?,
        percpu_counter_size: r.struct_size("percpu_counter")? as u32,
        page_shift: page.trailing_zeros(),
        cgroup_kn: r.field("cgroup", &["kn"], 8)?,
        cgroup_root: r.field("cgroup", &["root"], 8)?,
        kernfs_node_id: r.field("kernfs_node", &["id"], 8)?,
        cgroup_root_hierarchy_id: r.field("cgroup_root", &["hierarchy_id"], 4)?,
        task_comm: r.field(task, &["comm"], 16)?,
        _reserved: [0; 5],
    })
}

struct Resolver<'a> {
    btf: &'a Btf,
}

impl Resolver<'_> {
    /// The byte offset of `path` (a field, or a chain through embedded structs) in struct
    /// `name`, checking that the final field is `size` bytes wide.
    fn field(&self, name: &str, path: &[&str], size: usize) -> Result<u32> {
        let what = || format!("{name}.{}", path.join("."));
        let mut ty = self.named_struct(name)?;
        let mut bits = 0u32;
        let mut last = None;
        for (i, part) in path.iter().enumerate() {
            let s = self
                .as_struct(&ty)
                .ok_or_else(|| Error::Btf(format!("{} is not a struct", what())))?;
            let (off, member_ty) = self
                .find_member(&s, part)?
                .ok_or_else(|| Error::Btf(format!("{} not found in this kernel", what())))?;
            bits += off;
            ty = self.strip(member_ty)?;
            if i + 1 == path.len() {
                last = Some(ty.clone());
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(Error::Btf(format!("{} is a bit field", what())));
        }
        let actual = last.as_ref().map(|t| self.size_of(t)).transpose()?.flatten();
        if actual != Some(size) {
            return Err(Error::Btf(format!(
                "{} is {} bytes wide, expected {size}",
                what(),
                actual.map_or("an unknown number of".to_owned(), |a| a.to_string())
            )));
        }
        Ok(bits / 8)
    }

    fn struct_size(&self, name: &str) -> Result<usize> {
        match self.named_struct(name)? {
            Type::Struct(s) => Ok(s.size()),
            _ => Err(Error::Btf(format!("{name} is not a struct"))),
        }
    }

    fn named_struct(&self, name: &str) -> Result<Type> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| Error::Btf(format!("struct {name}: {e}")))?;
        types
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
            .ok_or_else(|| Error::Btf(format!("struct {name} not found")))
    }

    fn as_struct(&self, ty: &Type) -> Option<btf_rs::Struct> {
        match ty {
            Type::Struct(s) | Type::Union(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Find `name` among the members of `s`, looking into anonymous structs and unions.
    /// Returns the bit offset and the member's type.
    fn find_member(&self, s: &btf_rs::Struct, name: &str) -> Result<Option<(u32, Type)>> {
        for m in &s.members {
            let member_name = self.btf.resolve_name(m).unwrap_or_default();
            let mty = self
                .btf
                .resolve_chained_type(m)
                .map_err(|e| Error::Btf(format!("member {member_name}: {e}")))?;
            if member_name == name {
                return Ok(Some((m.bit_offset(), mty)));
            }
            if member_name.is_empty()
                && let Some(inner) = self.as_struct(&self.strip(mty)?)
                && let Some((off, t)) = self.find_member(&inner, name)?
            {
                return Ok(Some((m.bit_offset() + off, t)));
            }
        }
        Ok(None)
    }

    /// Follow typedefs and qualifiers to the underlying type.
    fn strip(&self, mut ty: Type) -> Result<Type> {
        for _ in 0..16 {
            match &ty {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    let inner =
                        ty.as_btf_type().ok_or_else(|| Error::Btf("bad type chain".into()))?;
                    ty = self
                        .btf
                        .resolve_chained_type(inner)
                        .map_err(|e| Error::Btf(format!("type chain: {e}")))?;
                }
                _ => return Ok(ty),
            }
        }
        Err(Error::Btf("type chain too long".into()))
    }

    fn size_of(&self, ty: &Type) -> Result<Option<usize>> {
        Ok(match self.strip(ty.clone())? {
            Type::Int(i) => Some(i.size()),
            Type::Ptr(_) => Some(8),
            Type::Enum(e) => Some(e.size()),
            Type::Struct(s) | Type::Union(s) => Some(s.size()),
            Type::Array(a) => {
                let elem =
                    self.btf.resolve_chained_type(&a).map_err(|e| Error::Btf(e.to_string()))?;
                self.size_of(&elem)?.map(|n| n * a.len())
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `int` and `struct task_struct { int pid; }` only: a kernel whose
    /// task_struct lacks what the programs read.
    fn tiny_btf() -> Vec<u8> {
        let strings = b"\0int\0task_struct\0pid\0";
        let mut types = vec![];
        let mut put = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] INT "int": 4 bytes, 32 bits.
        put(1);
        put(1 << 24);
        put(4);
        put(32);
        // [2] STRUCT "task_struct" { int pid; }: 8 bytes.
        put(5);
        put((4 << 24) | 1);
        put(8);
        put(17);
        put(1);
        put(0);
        let mut out = vec![];
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn a_kernel_without_a_field_is_a_clear_error_not_a_wrong_offset() {
        let path = std::env::temp_dir().join(format!("tiny-btf-{}", std::process::id()));
        std::fs::write(&path, tiny_btf()).unwrap();
        let err = kernel_offsets(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("task_struct.tgid not found in this kernel"), "{err}");
    }

    #[test]
    fn missing_btf_is_named() {
        let err = kernel_offsets(Path::new("/nonexistent/vmlinux")).unwrap_err().to_string();
        assert!(err.contains("no BTF") && err.contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn this_kernels_offsets_resolve() {
        let vmlinux = Path::new(crate::paths::BTF_VMLINUX);
        if !vmlinux.exists() {
            return;
        }
        let off = kernel_offsets(vmlinux).unwrap();
        assert_eq!(off.task_tgid, off.task_pid + 4);
        assert!(off.task_sum_exec > 0 && off.mm_rss_stat > 0 && off.percpu_counter_size > 0);
        assert!(off.page_shift >= 12, "page shift {}", off.page_shift);
    }
}
