//! Turns the parsed command line into a validated `Config`: every bad value is
//! rejected here with the flag's name and what would be accepted, before
//! anything touches the kernel.

use std::{collections::HashMap, time::Duration};

use thiserror::Error;
use tracer_common::MAX_CAPTURE;

use crate::{
    budget::{Budget, TooSmall},
    cli::{CaptureArgs, PipelineArgs},
    metadata::KubeOptions,
    source::{
        loader::{LoadOptions, SourceChoice},
        packet_sockets::Interface,
    },
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--capture-bytes {0}: must be between 1 and {MAX_CAPTURE}")]
    CaptureBytes(u32),
    #[error("--ring-buffer-mib {0}: must be a power of two between 1 and 1024")]
    RingBuffer(u32),
    #[error("--max-connections {0}: must be between 16 and 4194304")]
    MaxConnections(u32),
    #[error("--max-routes-per-service {0}: must be between 1 and 10000")]
    MaxRoutes(usize),
    #[error("--service-name {0:?}: expected EXE=NAME, e.g. --service-name nginx=frontend")]
    ServiceName(String),
    #[error("--request-timeout {0:?}: must be between 1s and 1h")]
    RequestTimeout(Duration),
    #[error("--pod-grace-period {0:?}: must be at most 24h")]
    PodGrace(Duration),
    #[error("--interfaces {name:?}: no such interface here; the interfaces are: {known}")]
    Interface { name: String, known: String },
    #[error("--interfaces applies to the packet path: add --source packets or --source both")]
    InterfacesWithoutPackets,
    #[error(transparent)]
    Memory(#[from] TooSmall),
}

/// The pipeline's own settings (`run`, `watch`), validated.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub kube: KubeOptions,
    pub request_timeout: Duration,
}

impl PipelineConfig {
    pub fn from_args(args: &PipelineArgs) -> Result<Self, ConfigError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&args.request_timeout) {
            return Err(ConfigError::RequestTimeout(args.request_timeout));
        }
        if args.pod_grace_period > Duration::from_secs(86_400) {
            return Err(ConfigError::PodGrace(args.pod_grace_period));
        }
        Ok(Self {
            kube: KubeOptions {
                kubeconfig: args
                    .kubeconfig
                    .clone()
                    .filter(|p| !p.as_os_str().is_empty()),
                node_name: args.node_name.clone(),
                pod_grace: args.pod_grace_period,
            },
            request_timeout: args.request_timeout,
        })
    }
}

/// What the pipeline needs to know, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub load: LoadOptions,
    /// Executable name → service name overrides.
    pub service_names: HashMap<String, String>,
    pub max_routes_per_service: usize,
    pub max_connections: usize,
    pub budget: Budget,
}

impl Config {
    pub fn from_args(args: &CaptureArgs, hooks_only: bool) -> Result<Self, ConfigError> {
        if args.capture_bytes == 0 || args.capture_bytes as usize > MAX_CAPTURE {
            return Err(ConfigError::CaptureBytes(args.capture_bytes));
        }
        let budget = Budget::resolve(args.memory_mib)?;
        let ring_buffer_mib = match args.ring_buffer_mib {
            Some(mib) if !mib.is_power_of_two() || mib > 1024 => {
                return Err(ConfigError::RingBuffer(mib))
            }
            Some(mib) => mib,
            None => (budget.ring_bytes >> 20) as u32,
        };
        let max_connections = match args.max_connections {
            Some(n) if !(16..=4 << 20).contains(&n) => return Err(ConfigError::MaxConnections(n)),
            Some(n) => n,
            None => budget.max_connections as u32,
        };
        if !(1..=10_000).contains(&args.max_routes_per_service) {
            return Err(ConfigError::MaxRoutes(args.max_routes_per_service));
        }
        let interfaces = interfaces(args)?;
        let mut service_names = HashMap::new();
        for pair in &args.service_names {
            match pair.split_once('=') {
                Some((exe, name)) if !exe.is_empty() && !name.is_empty() => {
                    service_names.insert(exe.to_string(), name.to_string());
                }
                _ => return Err(ConfigError::ServiceName(pair.clone())),
            }
        }
        Ok(Self {
            load: LoadOptions {
                mode: args.attach,
                capture_limit: args.capture_bytes,
                ring_buffer_bytes: ring_buffer_mib << 20,
                max_connections,
                hooks_only,
                source: args.source,
                interfaces,
            },
            service_names,
            max_routes_per_service: args.max_routes_per_service,
            max_connections: max_connections as usize,
            budget,
        })
    }
}

/// The packet path's interfaces by index (empty: all), each checked to exist.
fn interfaces(args: &CaptureArgs) -> Result<Vec<Interface>, ConfigError> {
    if args.interfaces.is_empty() {
        return Ok(Vec::new());
    }
    if args.source == SourceChoice::Syscalls {
        return Err(ConfigError::InterfacesWithoutPackets);
    }
    args.interfaces
        .iter()
        .map(|name| {
            Interface::by_name(name).ok_or_else(|| ConfigError::Interface {
                name: name.clone(),
                known: Interface::names().join(", "),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["tracer", "watch"];
        argv.extend_from_slice(extra);
        // A budget of its own: the default would be this test's cgroup's.
        if !extra.contains(&"--memory-mib") {
            argv.extend(["--memory-mib", "512"]);
        }
        let cli = Cli::try_parse_from(argv).expect("clap accepts the flags");
        let Command::Watch(w) = cli.command else {
            unreachable!("parsed watch")
        };
        Config::from_args(&w.capture, false)
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.load.capture_limit, 4096);
        assert_eq!(c.load.ring_buffer_bytes, 8 << 20);
        assert_eq!(c.max_connections, 65536);
    }

    #[test]
    fn bad_values_name_their_flag() {
        let e = parse(&["--capture-bytes", "0"]).unwrap_err();
        assert!(e.to_string().starts_with("--capture-bytes 0"));
        let e = parse(&["--capture-bytes", "16385"]).unwrap_err();
        assert_eq!(e, ConfigError::CaptureBytes(16385));
        let e = parse(&["--ring-buffer-mib", "3"]).unwrap_err();
        assert!(e.to_string().contains("--ring-buffer-mib"));
        let e = parse(&["--max-connections", "8"]).unwrap_err();
        assert!(e.to_string().starts_with("--max-connections 8"));
        let e = parse(&["--memory-mib", "32"]).unwrap_err();
        assert!(e.to_string().starts_with("--memory-mib is 32 MiB"), "{e}");
        let e = parse(&["--service-name", "nginx"]).unwrap_err();
        assert!(e.to_string().contains("EXE=NAME"));
    }

    #[test]
    fn the_budget_sizes_what_no_flag_sets() {
        let c = parse(&["--memory-mib", "128"]).unwrap();
        assert_eq!(c.load.ring_buffer_bytes, 2 << 20);
        assert_eq!(c.max_connections, 16384);
        assert_eq!(c.load.max_connections, 16384);
        let c = parse(&["--memory-mib", "128", "--ring-buffer-mib", "16"]).unwrap();
        assert_eq!(c.load.ring_buffer_bytes, 16 << 20);
        assert_eq!(c.max_connections, 16384);
        let c = parse(&["--memory-mib", "128", "--max-connections", "16"]).unwrap();
        assert_eq!((c.max_connections, c.load.ring_buffer_bytes), (16, 2 << 20));
    }

    #[test]
    fn service_names_map_executables() {
        let c = parse(&["--service-name", "nginx=frontend,python3=api"]).unwrap();
        assert_eq!(c.service_names["nginx"], "frontend");
        assert_eq!(c.service_names["python3"], "api");
    }

    #[test]
    fn clap_rejects_unknown_attach_mode() {
        let err = Cli::try_parse_from(["tracer", "run", "--attach", "uprobe"]).unwrap_err();
        assert!(err.to_string().contains("--attach"));
    }

    fn parse_pipeline(extra: &[&str]) -> Result<PipelineConfig, ConfigError> {
        let mut argv = vec!["tracer", "run"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).expect("clap accepts the flags");
        let Command::Run(r) = cli.command else {
            unreachable!("parsed run")
        };
        PipelineConfig::from_args(&r.pipeline)
    }

    #[test]
    fn pipeline_defaults_and_durations() {
        let c = parse_pipeline(&[]).unwrap();
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.kube.pod_grace, Duration::from_secs(300));
        let c = parse_pipeline(&["--request-timeout", "2s", "--pod-grace-period", "90"]).unwrap();
        assert_eq!(c.request_timeout, Duration::from_secs(2));
        assert_eq!(c.kube.pod_grace, Duration::from_secs(90));
        let e = parse_pipeline(&["--request-timeout", "500ms"]).unwrap_err();
        assert!(e.to_string().starts_with("--request-timeout"), "{e}");
        let e = parse_pipeline(&["--pod-grace-period", "48h"]).unwrap_err();
        assert!(e.to_string().starts_with("--pod-grace-period"), "{e}");
    }

    #[test]
    fn durations_name_the_fix() {
        use crate::cli::parse_duration;
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 minutes")
            .unwrap_err()
            .contains("use s, m, h or ms"));
        assert!(parse_duration("soon").unwrap_err().contains("e.g. 30s"));
        let err = Cli::try_parse_from(["tracer", "run", "--request-timeout", "x"]).unwrap_err();
        assert!(err.to_string().contains("--request-timeout"));
    }

    #[test]
    fn interfaces_need_the_packet_path_and_must_exist() {
        assert_eq!(
            parse(&["--interfaces", "lo"]).unwrap_err(),
            ConfigError::InterfacesWithoutPackets
        );
        match parse(&["--source", "packets", "--interfaces", "lo,nope0"]).unwrap_err() {
            ConfigError::Interface { name, known } => {
                assert_eq!(name, "nope0");
                assert!(known.split(", ").any(|n| n == "lo"), "{known}");
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["--source", "both", "--interfaces", "lo"]).unwrap();
        assert_eq!(c.load.source, SourceChoice::Both);
        assert_eq!(c.load.interfaces[0].index, 1);
        assert!(parse(&["--source", "packets"])
            .unwrap()
            .load
            .interfaces
            .is_empty());
    }
}
