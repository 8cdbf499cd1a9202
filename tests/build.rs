//! Builds the C escape helper the tests run inside slots.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo")).join("escape");
    let src = "helpers/escape.c";
    println!("cargo:rerun-if-changed={src}");
    let status = Command::new(env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-O2", "-Wall", "-Werror", "-pthread", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .expect("a C compiler (cc) is needed to build the test helper");
    assert!(status.success(), "building {src} failed");
    println!("cargo:rustc-env=ESCAPE_HELPER={}", out.display());
}
