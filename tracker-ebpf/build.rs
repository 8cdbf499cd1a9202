//! The eBPF crate links with `bpf-linker`, which cargo does not know about: rebuild when it changes.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found: run `cargo xtask build-and-load`"),
    }
}
