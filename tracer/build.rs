//! Builds the kernel programs (tracer-ebpf) for `bpfel-unknown-none` and
//! leaves the object in OUT_DIR for `include_bytes!`. That build needs a
//! compiler that can build `core` for the BPF target and bpf-linker; this
//! script finds them and, when one is missing, fails with one message naming
//! it and the command that installs it (`cargo xtask bootstrap`).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("tracer/ has no parent")?;
    let ebpf_dir = root.join("tracer-ebpf");
    for path in ["src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tracer-common/src").display()
    );
    println!("cargo:rerun-if-env-changed=TRACER_BPF_RUSTC");

    let rustc = bpf_rustc()?;
    ensure_bpf_linker()?;

    // A target dir of its own: the outer cargo holds a lock on its own.
    let target_dir = root.join("target").join("bpf");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", &rustc)
        // Debian's rustc is a stable compiler; -Z build-std needs this.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", path_with_cargo_bin());
    // The outer build's settings must not leak into a different target.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_BUILD_RUSTC",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().context("running cargo for tracer-ebpf")?;
    if !status.success() {
        bail!("building the kernel programs (tracer-ebpf) failed; see the compiler output above");
    }
    let object = target_dir.join("bpfel-unknown-none/release/tracer-ebpf");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("tracer.bpf.o");
    std::fs::copy(&object, &out)
        .with_context(|| format!("copying {} to {}", object.display(), out.display()))?;
    Ok(())
}

/// A rustc that can build `core` for bpfel-unknown-none: its sysroot must
/// hold the library sources (rust-src).
fn bpf_rustc() -> Result<PathBuf> {
    if let Ok(explicit) = env::var("TRACER_BPF_RUSTC") {
        return Ok(PathBuf::from(explicit));
    }
    let candidates = [
        // rustup's nightly with the rust-src component, where it exists.
        rustup_rustc("nightly"),
        // Debian's rustc-web with rust-web-src (sysroot /usr).
        Some(PathBuf::from("/usr/bin/rustc")),
    ];
    for rustc in candidates.into_iter().flatten() {
        if has_core_sources(&rustc) {
            return Ok(rustc);
        }
    }
    bail!(
        "no compiler that can build `core` for bpfel-unknown-none: need rustup nightly with \
         rust-src, or Debian's rustc-web and rust-web-src. Run `cargo xtask bootstrap` to install \
         them (or set TRACER_BPF_RUSTC to such a rustc)"
    )
}

fn rustup_rustc(toolchain: &str) -> Option<PathBuf> {
    let out = Command::new("rustup")
        .args(["which", "--toolchain", toolchain, "rustc"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn has_core_sources(rustc: &Path) -> bool {
    let Ok(out) = Command::new(rustc)
        .args(["--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
    else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success()
        && sysroot
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .exists()
}

fn ensure_bpf_linker() -> Result<()> {
    let found = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path_with_cargo_bin())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        bail!(
            "bpf-linker is not installed (needed to link the kernel programs). Run `cargo xtask \
             bootstrap`, which installs it with `cargo install bpf-linker`"
        );
    }
    Ok(())
}

/// PATH with cargo's bin directory, where `cargo install` puts bpf-linker.
fn path_with_cargo_bin() -> String {
    let path = env::var("PATH").unwrap_or_default();
    let cargo_home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"));
    format!("{}:{}", cargo_home.join("bin").display(), path)
}
