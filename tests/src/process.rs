//! Child processes and temporary directories that clean up after a test,
//! including one that panics: a [`Guard`] sends SIGTERM to its child on drop
//! (then SIGKILL if it lingers), and a [`TestDir`] removes itself unless the
//! test failed, in which case it stays and its path is printed for the logs.
//!
//! A child's stdout and stderr go to files in the test directory rather than
//! pipes, so a chatty child can never block on a full pipe.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a child gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);

/// A per-test directory under the system temp dir.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// `<tmp>/tracer-e2e-<name>-<pid>-<n>-<nanos>`, world-readable so a peer
    /// that drops privileges can still read its files.
    pub fn new(name: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tracer-e2e-{name}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Creates (or replaces) a file inside the directory.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: its files are kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A running child process, stopped on drop.
#[derive(Debug)]
pub struct Guard {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl Guard {
    /// Spawns `cmd` with stdin closed and stdout/stderr in `<dir>/<name>.std{out,err}`.
    pub fn spawn(name: &str, cmd: &mut Command, dir: &TestDir) -> Self {
        let stdout = dir.join(&format!("{name}.stdout"));
        let stderr = dir.join(&format!("{name}.stderr"));
        let out = fs::File::create(&stdout).expect("create stdout file");
        let err = fs::File::create(&stderr).expect("create stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waitpid");
        }
        self.status
    }

    /// Panics with the child's stderr if it has exited: for readiness loops.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited early ({status}); stderr:\n{}",
                self.name,
                self.stderr()
            );
        }
    }

    /// Everything the child wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stdout).unwrap_or_default()).into_owned()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines of stderr, for failure messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends `signal` to the child (if it still runs).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.exited().is_none() {
            let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
            // SAFETY: kill(2) on our own child's pid; it has not been reaped
            // (exited() is None), so the pid cannot have been reused.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// SIGTERM, wait up to [`TERM_GRACE`], then SIGKILL. Returns the exit
    /// status and whether the child needed the SIGKILL.
    pub fn terminate(&mut self) -> (ExitStatus, bool) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return (status, false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait after SIGKILL");
        self.status = Some(status);
        (status, true)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let (_, killed) = self.terminate();
            if killed {
                eprintln!("{} ignored SIGTERM for {TERM_GRACE:?}; killed", self.name);
            }
        }
    }
}
