//! Builds the C helpers the tests run: the escape artist (inside slots) and the attacker (as
//! other users and inside slots).
use std::{env, path::PathBuf, process::Command};

fn main() {
    build("escape", "ESCAPE_HELPER");
    build("attacker", "ATTACKER_HELPER");
}

fn build(name: &str, env_var: &str) {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo")).join(name);
    let src = format!("helpers/{name}.c");
    println!("cargo:rerun-if-changed={src}");
    let status = Command::new(env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is needed to build the test helpers");
    assert!(status.success(), "building {src} failed");
    println!("cargo:rustc-env={env_var}={}", out.display());
}
