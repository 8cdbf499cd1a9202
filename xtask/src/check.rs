//! `cargo xtask check`: formatting, lints and unit tests, as any user, without the BPF
//! toolchain: the kernel programs are not built (`AYA_BUILD_EBPF=false` embeds an empty object,
//! which `tracker load` refuses in one line). For a contributor's laptop; `cargo xtask test`
//! runs all of this too, with the real kernel programs, and the kernel tests.
use std::process::Command;

use anyhow::Result;

use crate::run;

pub fn run() -> Result<()> {
    println!("xtask: checking formatting");
    run::quiet(cargo().args(["fmt", "--all", "--", "--check"]))?;
    println!("xtask: clippy (kernel programs not built)");
    run::quiet(cargo().args(["clippy", "--quiet", "--all-targets", "--", "-D", "warnings"]))?;
    println!("xtask: unit tests (kernel programs not built)");
    run::status(cargo().args(["test", "--lib", "--bins"]))
}

fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    // Its own target directory: the stub must not replace the real object in target/, nor
    // the real build be redone after each check.
    c.current_dir(run::workspace())
        .env("AYA_BUILD_EBPF", "false")
        .env("CARGO_TARGET_DIR", run::workspace().join("target/check"));
    c
}
