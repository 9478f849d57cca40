//! Least privilege: `tracer run` as an unprivileged user (nobody) holding
//! only the capabilities the README and the DaemonSet
//! (`manifests/base/daemonset.yaml`) give it — CAP_BPF, CAP_PERFMON,
//! CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH — counts curl's requests to nginx
//! exactly; without CAP_BPF it stops with one line naming what is missing.
//!
//! The capabilities are handed over as ambient capabilities by `setpriv`
//! (util-linux), so the tracer starts with exactly this set and no other.
//! Ground truth: nginx's access log and curl's own statuses.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tracer_e2e::net::url;
use tracer_e2e::tracer::tracer_bin;
use tracer_e2e::wait::START_TIMEOUT;
use tracer_e2e::{
    curl, privileged, require_tool, wait_until, Guard, Nginx, Peer, TestDir, Tracer, Want,
};

/// The capabilities the tracer documents, as setpriv spells them.
const CAPS: &str = "+bpf,+perfmon,+sys_ptrace,+dac_read_search";
const NOBODY: &str = "65534";

/// The capabilities `manifests/base/daemonset.yaml` adds, in setpriv's
/// spelling: the DaemonSet must run with the set this test proves enough.
fn daemonset_caps() -> String {
    let path = tracer_e2e::workspace_root().join("manifests/base/daemonset.yaml");
    let yaml = fs::read_to_string(&path).expect("read the DaemonSet");
    let mut caps: Vec<String> = yaml
        .lines()
        .skip_while(|l| l.trim() != "add:")
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .take_while(|l| l.starts_with("- "))
        .map(|l| format!("+{}", l.trim_start_matches("- ").to_lowercase()))
        .collect();
    caps.sort();
    caps.join(",")
}

/// setpriv as nobody with `caps` inheritable and ambient, every other
/// capability dropped from the bounding set.
fn as_nobody(caps: &str) -> Vec<String> {
    let setpriv = require_tool("setpriv").display().to_string();
    let bounding = format!("-all,{caps}");
    vec![
        setpriv,
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
        format!("--inh-caps=-all,{caps}"),
        format!("--ambient-caps=-all,{caps}"),
        format!("--bounding-set={bounding}"),
        "--".to_string(),
    ]
}

/// The tracer binary where nobody may run it: the build tree may sit in a
/// directory only root can enter.
fn tracer_for_nobody(dir: &TestDir) -> PathBuf {
    let bin = dir.join("tracer");
    fs::copy(tracer_bin(), &bin).expect("copy the tracer binary");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod the tracer");
    bin
}

#[test]
fn counts_exactly_with_only_the_documented_capabilities() {
    if !privileged("counts_exactly_with_only_the_documented_capabilities") {
        return;
    }
    let mut documented: Vec<&str> = CAPS.split(',').collect();
    documented.sort_unstable();
    assert_eq!(
        daemonset_caps(),
        documented.join(","),
        "the DaemonSet's capabilities"
    );
    let dir = TestDir::new("least-privilege");
    let bin = tracer_for_nobody(&dir);
    let launcher = as_nobody(CAPS);
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    let tracer = Tracer::start_via(&dir, &launcher, &bin, &[]);
    let status = fs::read_to_string(format!("/proc/{}/status", tracer.pid())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        field("Uid:"),
        NOBODY,
        "the tracer runs as nobody:\n{status}"
    );
    // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_PERFMON (38), CAP_BPF (39).
    let want = (1u64 << 2) | (1 << 19) | (1 << 38) | (1 << 39);
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).ok(),
        Some(want),
        "the tracer's effective capabilities:\n{status}"
    );

    let nginx = Nginx::start(&dir, "        location = /lp/created { return 201; }\n");
    let mut runs = 0;
    for (path, status, n) in [("/lp/ok", 200, 5), ("/lp/created", 201, 3)] {
        for _ in 0..n {
            let got = curl(&["-X", "POST", "-d", "x=1"], &[url(nginx.addr(), path)]);
            assert_eq!(got[0].status, status, "{path}");
            runs += 1;
        }
    }
    tracer.barrier(&nginx);
    let log = nginx.access_log();
    let mut wants = Vec::new();
    for ((method, status, route), n) in log.counts("/lp/") {
        wants.push(
            Want::server("nginx", &route)
                .method(&method)
                .status(status)
                .is(n),
        );
        wants.push(
            Want::client("curl", &route)
                .method(&method)
                .status(status)
                .is(n),
        );
    }
    assert_eq!(
        wants.iter().map(|w| w.count).sum::<u64>(),
        2 * runs,
        "nginx logged every request"
    );
    tracer.expect(&wants);
}

#[test]
fn without_cap_bpf_the_error_names_it() {
    if !privileged("without_cap_bpf_the_error_names_it") {
        return;
    }
    let dir = TestDir::new("least-privilege-no-bpf");
    let bin = tracer_for_nobody(&dir);
    let launcher = as_nobody("+perfmon,+sys_ptrace,+dac_read_search");
    let mut cmd = Command::new(&launcher[0]);
    cmd.args(&launcher[1..]).arg(&bin).arg("run");
    let mut guard = Guard::spawn("tracer-no-bpf", &mut cmd, &dir);
    let status = wait_until(START_TIMEOUT.max(Duration::from_secs(20)), || {
        guard.exited()
    })
    .unwrap_or_else(|| panic!("the tracer did not exit; stderr:\n{}", guard.stderr()));
    let stderr = guard.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    let held = ["CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"];
    assert!(
        lines[0].contains("CAP_BPF") && !held.iter().any(|cap| lines[0].contains(cap)),
        "the line names CAP_BPF and nothing that is there: {stderr}"
    );
}
