//! `cargo xtask fuzz`: seeds each fuzz target of `tracer/fuzz` from the
//! golden fixtures, runs them with cargo-fuzz (libFuzzer), and prints one
//! line of figures per target. The test command runs every target briefly;
//! docs/fuzzing.md has the long runs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Args;

/// The targets, and the golden fixture folders (`tracer/tests/fixtures/`)
/// that seed each: the protocol's own cases, every case for the targets
/// that start by inferring the protocol.
const TARGETS: [(&str, &[&str]); 10] = [
    ("http1", &["http1"]),
    ("http2", &["http2"]),
    ("postgres", &["postgres"]),
    ("mysql", &["mysql"]),
    ("redis", &["redis"]),
    ("detect", &ALL_FIXTURES),
    ("pipeline", &ALL_FIXTURES),
    ("reassembly", &[]),
    ("ring_walk", &[]),
    ("packets", &[]),
];

const ALL_FIXTURES: [&str; 5] = ["http1", "http2", "postgres", "mysql", "redis"];

/// The sides the parsers trace by default (a fixture's `side` line says
/// otherwise): HTTP on the server, databases on the client.
const CLIENT_BY_DEFAULT: [&str; 3] = ["postgres", "mysql", "redis"];

#[derive(Args, Debug, Clone)]
pub struct FuzzArgs {
    /// Executions per target (libFuzzer's -runs).
    #[arg(long, conflicts_with = "seconds")]
    pub runs: Option<u64>,
    /// Seconds per target (libFuzzer's -max_total_time); default 10.
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Only these targets (default: all).
    pub targets: Vec<String>,
}

/// What one run of one target did.
struct Figures {
    target: String,
    runs: u64,
    seconds: f64,
    corpus: usize,
    coverage: Option<u64>,
}

pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    let fuzz_dir = root.join("tracer/fuzz");
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.iter().map(|(t, _)| *t).collect()
    } else {
        for t in &args.targets {
            if !TARGETS.iter().any(|(name, _)| name == t) {
                bail!(
                    "no fuzz target `{t}`; the targets are: {}",
                    TARGETS.map(|(t, _)| t).join(", ")
                );
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let status = cargo_fuzz(&fuzz_dir)
        .args(["build", "-O", "-a", "-s", "none"])
        .status()
        .context("running cargo +nightly fuzz build")?;
    if !status.success() {
        bail!("building the fuzz targets failed (see above)");
    }
    let limit = match (args.runs, args.seconds) {
        (Some(runs), _) => format!("-runs={runs}"),
        (None, seconds) => format!("-max_total_time={}", seconds.unwrap_or(10)),
    };
    let mut figures = Vec::new();
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        seed(root, target, &corpus)?;
        figures.push(run_target(&fuzz_dir, target, &corpus, &limit)?);
    }
    println!("| target | executions | seconds | executions/s | corpus | coverage (edges) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for f in &figures {
        println!(
            "| {} | {} | {:.0} | {:.0} | {} | {} |",
            f.target,
            f.runs,
            f.seconds,
            f.runs as f64 / f.seconds.max(0.001),
            f.corpus,
            f.coverage.map_or("-".to_string(), |c| c.to_string()),
        );
    }
    Ok(())
}

fn run_target(fuzz_dir: &Path, target: &str, corpus: &Path, limit: &str) -> Result<Figures> {
    let started = Instant::now();
    // libFuzzer's progress goes to a file one can follow during long runs.
    let logs = fuzz_dir.join("logs");
    fs::create_dir_all(&logs).context("creating tracer/fuzz/logs")?;
    let log_path = logs.join(format!("{target}.log"));
    let log_file =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let status = cargo_fuzz(fuzz_dir)
        .args(["run", "-O", "-a", "-s", "none", target])
        .arg(corpus)
        // Inputs up to 8 KiB: room for several messages and every step
        // kind, while the executions stay fast.
        .args(["--", limit, "-max_len=8192", "-print_final_stats=1"])
        .stdout(Stdio::null())
        .stderr(log_file)
        .status()
        .with_context(|| format!("running fuzz target {target}"))?;
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        bail!(
            "fuzz target {target} failed; the input that broke it is saved under \
             tracer/fuzz/artifacts/{target}/ (replay: cd tracer/fuzz && cargo +nightly fuzz run \
             -O -a -s none {target} FILE):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // "Done 165140 runs in 11 second(s)", "stat::number_of_executed_units: N"
    let runs = stat(&log, "stat::number_of_executed_units:")
        .or_else(|| {
            log.lines()
                .find_map(|l| l.strip_prefix("Done "))
                .and_then(|l| l.split(' ').next()?.parse().ok())
        })
        .context("libFuzzer printed no execution count")?;
    let coverage = log
        .lines()
        .rev()
        .find_map(|l| l.split_once(" cov: ")?.1.split(' ').next()?.parse().ok());
    let corpus = fs::read_dir(corpus).map_or(0, |d| d.count());
    let figures = Figures {
        target: target.to_string(),
        runs,
        seconds: started.elapsed().as_secs_f64(),
        corpus,
        coverage,
    };
    eprintln!(
        "xtask fuzz: {target}: {} executions, no crash",
        figures.runs
    );
    Ok(figures)
}

/// `cargo fuzz` on rustup's nightly (sanitizer coverage needs it), free of
/// the toolchain settings `cargo xtask` itself runs under.
fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(fuzz_dir)
        .args(["run", "nightly", "cargo", "fuzz"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO");
    cmd
}

fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// Writes one seed per golden case of the target's fixture folders, in the
/// script format of `tracer/fuzz/src/lib.rs`: the settings byte (bit 0: the
/// traced process is the client), then the request direction's bytes and
/// the response direction's, as data steps of at most 255 bytes.
fn seed(root: &Path, target: &str, corpus: &Path) -> Result<()> {
    fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let folders = TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .map_or(&[][..], |(_, f)| *f);
    for folder in folders {
        let dir = root.join("tracer/tests/fixtures").join(folder);
        for case in cases(&dir)? {
            let expect = fs::read_to_string(dir.join(format!("{case}.expect"))).unwrap_or_default();
            let client = match expect.lines().find_map(|l| l.trim().strip_prefix("side ")) {
                Some(side) => side.trim() == "client",
                None => CLIENT_BY_DEFAULT.contains(folder),
            };
            let read = |ext: &str| fs::read(dir.join(format!("{case}.{ext}"))).unwrap_or_default();
            let script = script(client, &read("req"), &read("resp"));
            fs::write(corpus.join(format!("seed-{folder}-{case}")), script)
                .with_context(|| format!("writing the seed of {folder}/{case}"))?;
        }
    }
    Ok(())
}

/// The names of the cases that have their own byte streams.
fn cases(dir: &Path) -> Result<Vec<String>> {
    let mut cases: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| {
            let path: PathBuf = e.ok()?.path();
            (path.extension()? == "req").then(|| path.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    cases.sort();
    Ok(cases)
}

fn script(client: bool, request: &[u8], response: &[u8]) -> Vec<u8> {
    // The traced process writes the requests when it is the client.
    const OUTBOUND: u8 = 0x80;
    let (request_flag, response_flag) = if client { (OUTBOUND, 0) } else { (0, OUTBOUND) };
    let mut out = vec![u8::from(client)];
    for (bytes, flag) in [(request, request_flag), (response, response_flag)] {
        for chunk in bytes.chunks(255) {
            out.push(flag);
            out.push(chunk.len() as u8);
            out.extend_from_slice(chunk);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::script;

    #[test]
    fn scripts_mark_the_traced_process_writes() {
        let s = script(false, b"GET", b"OK");
        assert_eq!(s, [0, 0x00, 3, b'G', b'E', b'T', 0x80, 2, b'O', b'K']);
        let long = vec![7u8; 300];
        let s = script(true, &long, b"");
        assert_eq!(s[..3], [1, 0x80, 255]);
        assert_eq!(s[258..260], [0x80, 45]);
        assert_eq!(s.len(), 1 + 2 + 255 + 2 + 45);
    }
}
