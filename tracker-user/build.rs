//! Builds the kernel programs (`tracker-ebpf`) for the BPF target with the nightly toolchain and
//! bpf-linker, so that `src/loader.rs` can embed the object. `cargo xtask build-and-load`
//! installs what this needs.
//!
//! `AYA_BUILD_EBPF=false` (the variable aya-template uses) embeds an empty object instead: the
//! library, the CLI and their unit tests then build without LLVM, bpf-linker or nightly, and
//! `tracker load` says what is missing. `cargo xtask check` builds so.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

const AYA_BUILD_EBPF: &str = "AYA_BUILD_EBPF";

fn main() -> anyhow::Result<()> {
    compile_protos()?;
    println!("cargo:rerun-if-env-changed={AYA_BUILD_EBPF}");
    if std::env::var(AYA_BUILD_EBPF).is_ok_and(|v| v == "false" || v == "0") {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("tracker"), []).context("writing the empty eBPF object")?;
        return Ok(());
    }
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker not found on PATH: run `cargo xtask build-and-load` (it installs the toolchain), or build without the kernel programs with AYA_BUILD_EBPF=false (`cargo xtask check`)"
        ));
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracker-ebpf")
        .ok_or_else(|| anyhow!("tracker-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}

/// The daemon's gRPC code (src/daemon), from proto/ at the workspace root. protox compiles the
/// .proto in Rust, so no `protoc` is needed; the descriptor set is kept for server reflection.
fn compile_protos() -> anyhow::Result<()> {
    // Read at run time: `env!` would bake in the checkout the build script was compiled in,
    // and a target/ copied from another checkout would then compile that checkout's .proto.
    let proto_root =
        std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    let fds = protox::compile(["tracker/v1/tracker.proto"], [&proto_root])
        .map_err(|e| anyhow!("compiling the .proto files: {e:?}"))?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tracker_v1_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .context("generating the gRPC code")
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("bpf-linker")).find(|p| p.is_file())
}
