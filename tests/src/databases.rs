//! The real database servers the tests trace, each on a free port in the
//! test's own directory, stopped when its guard drops: Redis
//! (`redis-server`), PostgreSQL 15 (with `pg_stat_statements`) and MariaDB.
//! Each gives its own statistics, the ground truth the tracer's counts are
//! compared with: `INFO commandstats`, `pg_stat_statements`,
//! `SHOW GLOBAL STATUS`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::net::free_port;
use crate::peers::wait_listening;
use crate::process::{Guard, TestDir};

/// Runs `cmd`, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `redis-server` without persistence, on 127.0.0.1.
#[derive(Debug)]
pub struct Redis {
    guard: Guard,
    port: u16,
}

impl Redis {
    pub fn start(dir: &TestDir) -> Self {
        let port = free_port();
        let mut cmd = Command::new(crate::require_tool("redis-server"));
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path());
        let mut guard = Guard::spawn("redis-server", &mut cmd, dir);
        wait_listening(&mut guard, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        Self { guard, port }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// `redis-cli` against this server with `args`.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = run_ok(
            Command::new(crate::require_tool("redis-cli"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `calls` per command (upper case) from `INFO commandstats`, as the
    /// server counts them; subcommands (`config|get`) fold into their
    /// command, as the tracer reports the command only.
    pub fn commandstats(&self) -> BTreeMap<String, u64> {
        let mut calls = BTreeMap::new();
        for line in self.cli(&["INFO", "commandstats"]).lines() {
            let Some((name, rest)) = line.trim().split_once(':') else {
                continue;
            };
            let Some(name) = name.strip_prefix("cmdstat_") else {
                continue;
            };
            let command = name.split('|').next().unwrap_or(name).to_uppercase();
            let n: u64 = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            *calls.entry(command).or_default() += n;
        }
        calls
    }
}

/// PostgreSQL 15 with `pg_stat_statements`, run as the `postgres` user
/// (initdb refuses root), listening on 127.0.0.1 with trust authentication.
#[derive(Debug)]
pub struct Postgres {
    guard: Guard,
    port: u16,
    socket_dir: PathBuf,
}

/// Where Debian installs the server binaries.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Postgres {
    pub fn start(dir: &TestDir) -> Self {
        Self::start_with_hba(dir, "")
    }

    /// As [`Postgres::start`], with `rules` (`pg_hba.conf` lines) ahead of
    /// initdb's, so that they win: the first matching line decides.
    pub fn start_with_hba(dir: &TestDir, rules: &str) -> Self {
        let data = dir.join("pgdata");
        let socket_dir = dir.join("pgsock");
        std::fs::create_dir_all(&socket_dir).expect("create the socket directory");
        // The postgres user must reach and own its directories.
        for path in [dir.path(), socket_dir.as_path()] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
                .expect("open the test directory to the postgres user");
        }
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(Path::new(PG_BIN).join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data),
        );
        let hba = data.join("pg_hba.conf");
        let initdb_rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(&hba, format!("{rules}{initdb_rules}")).expect("write pg_hba.conf");
        let port = free_port();
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .args(["-c", "shared_preload_libraries=pg_stat_statements"])
            .args(["-c", "pg_stat_statements.track=all", "-c", "fsync=off"]);
        let mut guard = Guard::spawn("postgres", &mut cmd, dir);
        wait_listening(&mut guard, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let pg = Self {
            guard,
            port,
            socket_dir,
        };
        pg.psql_socket("CREATE EXTENSION pg_stat_statements");
        pg
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Runs SQL over the Unix socket: not TCP, so not traced.
    pub fn psql_socket(&self, sql: &str) -> String {
        let out = run_ok(
            Command::new(crate::require_tool("psql"))
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    "postgres",
                ])
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-c", sql]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Completed calls per statement verb (upper case), as
    /// `pg_stat_statements` counts them, leaving out the statements that
    /// read or reset it.
    pub fn statement_counts(&self) -> BTreeMap<String, u64> {
        let rows = self.psql_socket(
            "SELECT upper(split_part(ltrim(query), ' ', 1)), sum(calls) FROM pg_stat_statements \
             WHERE query NOT LIKE '%pg_stat_statements%' GROUP BY 1",
        );
        rows.lines()
            .filter_map(|l| {
                let (verb, n) = l.split_once('|')?;
                Some((
                    verb.trim_end_matches(';').to_string(),
                    n.trim().parse().ok()?,
                ))
            })
            .filter(|(_, n): &(String, u64)| *n > 0)
            .collect()
    }

    /// The connection string of a TCP client (traced).
    pub fn tcp_args(&self) -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// The tracer's verb for each `Com_*` counter the suite's MySQL workloads
/// move. An executed prepared statement counts under its statement's verb
/// on both sides (`Com_stmt_execute` is their sum); `COM_STMT_CLOSE` has no
/// reply, so it is no operation.
pub const COM_VERBS: [(&str, &str); 12] = [
    ("Com_select", "SELECT"),
    ("Com_insert", "INSERT"),
    ("Com_update", "UPDATE"),
    ("Com_delete", "DELETE"),
    ("Com_create_db", "CREATE"),
    ("Com_create_table", "CREATE"),
    ("Com_drop_db", "DROP"),
    ("Com_drop_table", "DROP"),
    ("Com_change_db", "USE"),
    ("Com_set_option", "SET"),
    ("Com_stmt_prepare", "PREPARE"),
    ("Com_stmt_reset", "STMT_RESET"),
];

/// MariaDB on 127.0.0.1 without grant tables (no password anywhere).
#[derive(Debug)]
pub struct Mariadb {
    guard: Guard,
    port: u16,
    socket: PathBuf,
}

impl Mariadb {
    pub fn start(dir: &TestDir) -> Self {
        let data = dir.join("mariadb");
        let socket = dir.join("mariadb.sock");
        run_ok(
            Command::new(crate::require_tool("mariadb-install-db"))
                .arg(format!("--datadir={}", data.display()))
                .args(["--user=root", "--auth-root-authentication-method=normal"])
                .arg("--skip-test-db"),
        );
        let port = free_port();
        let mut cmd = Command::new(crate::require_tool("mariadbd"));
        cmd.arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .args([&format!("--port={port}"), "--bind-address=127.0.0.1"])
            .args(["--user=root", "--skip-grant-tables", "--skip-log-bin"])
            .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()));
        let mut guard = Guard::spawn("mariadbd", &mut cmd, dir);
        wait_listening(&mut guard, SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        Self {
            guard,
            port,
            socket,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Runs SQL over the Unix socket: not TCP, so not traced.
    pub fn sql_socket(&self, sql: &str) -> String {
        let out = run_ok(
            Command::new(crate::require_tool("mariadb"))
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-u", "root", "-N", "-B", "-e", sql]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Statements per verb the server ran between two [`Mariadb::com_status`]
    /// readings, named as the tracer names them (see [`COM_VERBS`]).
    pub fn verbs_between(
        before: &BTreeMap<String, u64>,
        after: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        let mut verbs = BTreeMap::new();
        for (counter, verb) in COM_VERBS {
            let n = after.get(counter).copied().unwrap_or(0)
                - before.get(counter).copied().unwrap_or(0);
            if n > 0 {
                *verbs.entry(verb.to_string()).or_default() += n;
            }
        }
        verbs
    }

    /// `SHOW GLOBAL STATUS` counters named `Com_*`, by name.
    pub fn com_status(&self) -> BTreeMap<String, u64> {
        self.sql_socket("SHOW GLOBAL STATUS LIKE 'Com\\_%'")
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once('\t')?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }
}
