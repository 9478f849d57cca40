//! What cargo cannot do alone: install the BPF toolchain and the real test
//! peers, build and run the tracer with privileges, run the whole test suite
//! (unit, golden and the privileged end-to-end suite), and run benchmarks
//! and the soak.

mod bench;
mod bootstrap;
mod fuzz;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run, test and benchmark the tracer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the kernel programs needs (and, with --peers,
    /// the real servers and clients the tests drive). Says what it installs.
    Bootstrap {
        #[arg(long)]
        peers: bool,
    },
    /// Bootstrap, build the release binary, and run `tracer run` with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bootstrap everything, then: fmt check, clippy, unit and golden tests,
    /// the privileged end-to-end suite against the release binary, and a
    /// short run of every fuzz target.
    Test,
    /// Install rustup's nightly and cargo-fuzz if missing, seed every fuzz
    /// target of tracer/fuzz from the golden fixtures, run them, and print
    /// their figures (see docs/fuzzing.md).
    Fuzz(fuzz::FuzzArgs),
    /// Bootstrap everything, build the release binary, then measure overhead
    /// (nginx under wrk), replay throughput and idle-connection memory, and
    /// print a markdown report (see docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Bootstrap the peers, build the release binary (unless --tracer), then
    /// soak it: keep-alive load at saturation, a churn of short connections,
    /// and both connection tables back to rest; print a markdown report and
    /// fail if a criterion is missed (see docs/benchmarks.md).
    Soak(soak::SoakArgs),
}

fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().command {
        Cmd::Bootstrap { peers } => {
            bootstrap::bpf_toolchain()?;
            if peers {
                bootstrap::test_peers()?;
            }
            Ok(())
        }
        Cmd::Run { args } => {
            bootstrap::bpf_toolchain()?;
            cargo(&root, &["build", "--release", "-p", "tracer"])?;
            let bin = release_tracer(&root);
            let mut cmd = Command::new(bin);
            cmd.arg("run").args(args);
            exec(cmd)
        }
        Cmd::Test => {
            bootstrap::bpf_toolchain()?;
            bootstrap::test_peers()?;
            cargo(&root, &["fmt", "--all", "--check"])?;
            cargo(
                &root,
                &[
                    "clippy",
                    "--all-targets",
                    "--workspace",
                    "--",
                    "-D",
                    "warnings",
                ],
            )?;
            let mut tally = Tally::default();
            let unit = tally.run(Command::new(cargo_bin()).current_dir(&root).args([
                "test",
                "--workspace",
                "--exclude",
                "tracer-e2e",
            ]))?;
            cargo(&root, &["build", "--release", "-p", "tracer"])?;
            let bin = release_tracer(&root);
            // --tests: the suite has no doc-tests, and an empty doc-test run
            // would be the last "test result" line.
            let e2e = tally.run(
                Command::new(cargo_bin())
                    .current_dir(&root)
                    .args(["test", "--release", "-p", "tracer-e2e", "--tests"])
                    .args(["--no-fail-fast", "--", "--test-threads=1"])
                    .env("TRACER_BIN", &bin),
            )?;
            // Ten seconds per target: enough to replay every seed and try
            // the mutations nearest to them.
            let fuzzed = bootstrap::fuzz_toolchain().and_then(|()| {
                fuzz::run(
                    &root,
                    &fuzz::FuzzArgs {
                        runs: None,
                        seconds: Some(10),
                        targets: Vec::new(),
                    },
                )
            });
            println!(
                "all tests: {} passed, {} failed",
                tally.passed, tally.failed
            );
            if let Err(e) = fuzzed {
                bail!("fuzzing failed: {e:#}");
            }
            if !unit {
                bail!("unit or golden tests failed");
            }
            if !e2e {
                bail!("end-to-end suite failed");
            }
            Ok(())
        }
        Cmd::Fuzz(args) => {
            bootstrap::fuzz_toolchain()?;
            fuzz::run(&root, &args)
        }
        Cmd::Bench(args) => {
            bootstrap::bpf_toolchain()?;
            bootstrap::test_peers()?;
            cargo(&root, &["build", "--release", "-p", "tracer"])?;
            bench::run(&root, &release_tracer(&root), &args)
        }
        Cmd::Soak(args) => {
            bootstrap::test_peers()?;
            let tracer = match &args.tracer {
                Some(path) => path.clone(),
                None => {
                    bootstrap::bpf_toolchain()?;
                    cargo(&root, &["build", "--release", "-p", "tracer"])?;
                    release_tracer(&root)
                }
            };
            soak::run(&tracer, &args)
        }
    }
}

/// Where `cargo build --release -p tracer` puts the binary: under
/// CARGO_TARGET_DIR when it is set (relative to the workspace, where our
/// cargo runs), else under target/.
fn release_tracer(root: &Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    target.join("release/tracer")
}

/// Passed and failed tests over several `cargo test` runs, read from their
/// "test result:" lines while their output goes through unchanged.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `cmd`, echoing its stdout; true if it succeeded.
    fn run(&mut self, cmd: &mut Command) -> Result<bool> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {cmd:?}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading test output")?;
            println!("{line}");
            if let Some(result) = line.strip_prefix("test result: ") {
                self.passed += count_before(result, " passed");
                self.failed += count_before(result, " failed");
            }
        }
        Ok(child.wait().context("waiting for cargo test")?.success())
    }
}

/// The number just before `label` in "ok. 96 passed; 0 failed; ...".
fn count_before(text: &str, label: &str) -> u64 {
    text.split(';')
        .find_map(|part| part.trim().strip_suffix(label))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo that runs us (`cargo xtask ...`).
fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(cargo_bin())
        .current_dir(root)
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn exec(mut cmd: Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

#[cfg(test)]
mod tally_tests {
    use super::count_before;

    #[test]
    fn reads_cargo_test_result_lines() {
        let line =
            "ok. 96 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.08s";
        assert_eq!(count_before(line, " passed"), 96);
        assert_eq!(count_before(line, " failed"), 2);
        assert_eq!(count_before("FAILED. 0 passed; 1 failed;", " failed"), 1);
        assert_eq!(count_before("garbage", " passed"), 0);
    }
}
