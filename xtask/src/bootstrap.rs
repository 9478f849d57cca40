//! Installs what is missing, and only that, saying what it installs: the
//! compiler and linker that build the kernel programs, and the real peers
//! (nginx, wrk, curl, Prometheus, Redis, PostgreSQL, MariaDB, h2load, gRPC)
//! the end-to-end suite drives, and ab for the soak. Everything
//! comes from Debian's packages or crates.io, the only registries here.

use std::{path::PathBuf, process::Command, sync::Once};

use anyhow::{bail, Context, Result};

/// Debian packages that give a stable rustc whose sysroot (/usr) carries the
/// library sources, so `-Z build-std=core` works for bpfel-unknown-none.
const DEBIAN_BPF_RUSTC: [&str; 2] = ["rustc-web", "rust-web-src"];

/// The peers the tests and benchmarks run, by the command (or, for an
/// absolute path, the file) each provides.
const PEERS: [(&str, &str); 19] = [
    ("nginx", "nginx-light"),
    ("wrk", "wrk"),
    ("curl", "curl"),
    ("prometheus", "prometheus"),
    ("python3", "python3"),
    ("ip", "iproute2"),
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("/usr/lib/postgresql/15/bin/postgres", "postgresql-15"),
    ("pgbench", "postgresql-client-15"),
    ("mariadbd", "mariadb-server"),
    ("mysqlslap", "mariadb-client"),
    ("h2load", "nghttp2-client"),
    // ApacheBench: the short connections of `cargo xtask soak`.
    ("ab", "apache2-utils"),
    // Talks to the Kubernetes stand-in in tests/tests/kube_standin.rs.
    ("kubectl", "kubernetes-client"),
    // Binaries and modules only: no service started on port 80.
    ("/usr/sbin/apache2", "apache2-bin"),
    (
        "/usr/lib/python3/dist-packages/grpc/__init__.py",
        "python3-grpcio",
    ),
    (
        "/usr/lib/python3/dist-packages/h2/__init__.py",
        "python3-h2",
    ),
    (
        "/usr/lib/x86_64-linux-gnu/perl5/5.36/DBD/MariaDB.pm",
        "libdbd-mariadb-perl",
    ),
];

pub fn bpf_toolchain() -> Result<()> {
    if bpf_rustc().is_none() {
        rustup_nightly_with_src();
    }
    if bpf_rustc().is_none() {
        say("no rustup nightly with rust-src could be had: installing Debian's rustc-web and rust-web-src instead");
        apt_install(&DEBIAN_BPF_RUSTC)?;
    }
    let Some(rustc) = bpf_rustc() else {
        bail!(
            "missing a compiler for the kernel programs: need rustup nightly with rust-src \
             (rustup toolchain install nightly --component rust-src) or Debian's rustc-web and \
             rust-web-src, and neither could be installed"
        );
    };
    if !has_bpf_linker() {
        let llvm = llvm_major(&rustc).unwrap_or(22);
        say(&format!(
            "bpf-linker is missing: installing LLVM {llvm} development files from Debian and \
             bpf-linker 0.13 from crates.io (cargo install, about 3 minutes)"
        ));
        apt_install(&[
            &format!("llvm-{llvm}-dev"),
            &format!("libpolly-{llvm}-dev"),
            "libzstd-dev",
            "zlib1g-dev",
        ])?;
        let status = Command::new(cargo())
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--no-default-features",
            ])
            .args(["--features", &format!("llvm-{llvm}")])
            .env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}"))
            .status()
            .context("running cargo install bpf-linker")?;
        if !status.success() || !has_bpf_linker() {
            bail!("missing bpf-linker: `cargo install bpf-linker` failed (see its output above)");
        }
    }
    Ok(())
}

/// What the fuzz targets need: rustup's nightly (sanitizer coverage) and
/// cargo-fuzz.
pub fn fuzz_toolchain() -> Result<()> {
    let has_nightly = || {
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has_nightly() {
        rustup_nightly_with_src();
    }
    if !has_nightly() {
        bail!(
            "fuzzing needs rustup's nightly toolchain (rustup toolchain install nightly), and it \
             could not be installed"
        );
    }
    if !on_path("cargo-fuzz") && !cargo_home().join("bin/cargo-fuzz").exists() {
        say("cargo-fuzz is missing: installing cargo-fuzz 0.13 from crates.io (cargo install, about 1 minute)");
        let status = Command::new(cargo())
            .args(["install", "cargo-fuzz", "--version", "^0.13", "--locked"])
            .status()
            .context("running cargo install cargo-fuzz")?;
        if !status.success() {
            bail!("missing cargo-fuzz: `cargo install cargo-fuzz` failed (see its output above)");
        }
    }
    Ok(())
}

pub fn test_peers() -> Result<()> {
    let missing: Vec<&str> = PEERS
        .iter()
        .filter(|(cmd, _)| match cmd.strip_prefix('/') {
            Some(_) => !PathBuf::from(cmd).exists(),
            None => !on_path(cmd),
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        say(&format!(
            "installing test peers from Debian: {}",
            missing.join(" ")
        ));
        apt_install(&missing)?;
    }
    Ok(())
}

/// The usual route: rustup's nightly with the `rust-src` component. Where
/// rustup cannot download, this fails quickly and Debian's rustc is used.
fn rustup_nightly_with_src() {
    if !on_path("rustup") {
        return;
    }
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = Command::new("rustup");
    if has_nightly {
        say("no compiler can build `core` for bpfel-unknown-none: adding rust-src to rustup's nightly (rustup component add rust-src --toolchain nightly)");
        cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    } else {
        say("no compiler can build `core` for bpfel-unknown-none: installing rustup's nightly with rust-src (rustup toolchain install nightly --profile minimal --component rust-src)");
        cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .args(["--component", "rust-src"]);
    }
    if !cmd.status().is_ok_and(|s| s.success()) {
        say("rustup could not install it");
    }
}

fn say(message: &str) {
    eprintln!("xtask bootstrap: {message}");
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Same rule as tracer/build.rs: a rustc whose sysroot has `core`'s sources.
fn bpf_rustc() -> Option<PathBuf> {
    if let Ok(explicit) = std::env::var("TRACER_BPF_RUSTC") {
        return Some(PathBuf::from(explicit));
    }
    let nightly = Command::new("rustup")
        .args(["which", "--toolchain", "nightly", "rustc"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    [nightly, Some(PathBuf::from("/usr/bin/rustc"))]
        .into_iter()
        .flatten()
        .find(|rustc| {
            Command::new(rustc)
                .args(["--print", "sysroot"])
                .env_remove("RUSTUP_TOOLCHAIN")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
                .is_some_and(|sysroot| {
                    sysroot
                        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
                        .exists()
                })
        })
}

fn llvm_major(rustc: &PathBuf) -> Option<u32> {
    let out = Command::new(rustc).arg("-vV").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn cargo_home() -> PathBuf {
    std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"))
}

fn has_bpf_linker() -> bool {
    on_path("bpf-linker") || cargo_home().join("bin/bpf-linker").exists()
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(cmd).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| PathBuf::from(dir).join(cmd).is_file())
}

fn apt_install(packages: &[&str]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "installing needs root: run `sudo apt-get install {}` or run this as root",
            packages.join(" ")
        );
    }
    static UPDATE: Once = Once::new();
    UPDATE.call_once(|| {
        say("apt-get update");
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
    });
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed (see above)", packages.join(" "));
    }
    Ok(())
}
