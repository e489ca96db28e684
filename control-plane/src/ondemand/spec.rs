//! The `services:` entry of the server config, as written and as checked: either a
//! `url` (a service that runs elsewhere) or a `command` that cemesh starts on demand.
//! Every value is checked when the config file is read, so a pool never meets a
//! nonsensical spec (`min` above `max`, a zero concurrency, a readiness path that is
//! not a path).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cemesh_dispatcher::Endpoints;
use serde::Deserialize;

use crate::duration::parse_humane;

/// Most instances one service may run: a guard against a typo starting a thousand
/// processes on a laptop.
pub const MAX_INSTANCES: u32 = 256;

/// One entry of `services:` as written in YAML.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntryRaw {
    /// The service's base URL (a service that runs elsewhere).
    url: Option<String>,
    /// argv of a process cemesh starts on demand (no shell).
    command: Option<Vec<String>>,
    /// Environment variable that receives the port the instance must listen on.
    port_env: Option<String>,
    /// Path polled (GET, expecting 2xx) before the first delivery to an instance.
    readiness: Option<String>,
    /// Target deliveries in flight per instance.
    concurrency: Option<u32>,
    /// Instances kept running with no work.
    min: Option<u32>,
    /// Instances at most.
    max: Option<u32>,
    /// Time without work after which an instance is stopped.
    idle: Option<String>,
    /// Longest wait for a new instance to become ready.
    start_timeout: Option<String>,
    /// Time between SIGTERM and SIGKILL when an instance is stopped.
    stop_grace: Option<String>,
    /// Extra environment variables for the process.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Working directory of the process (default: cemesh's).
    working_dir: Option<PathBuf>,
    /// Labels a SinkBinding's `subject.selector.matchLabels` selects the service by.
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Where a subscriber `ref` naming this service goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceTarget {
    /// A fixed base URL.
    Url(String),
    /// A pool of local processes started on demand.
    Command(CommandSpec),
}

/// A service cemesh runs itself, scaled on in-flight deliveries like Knative Serving
/// scales on concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// argv; the first element is the program, looked up in `PATH`.
    pub command: Vec<String>,
    /// Variable holding the port cemesh picked for the instance. Default `PORT`.
    pub port_env: String,
    /// Readiness path (starts with `/`); `None`: ready once the port accepts a
    /// connection.
    pub readiness: Option<String>,
    /// Target in flight per instance (Knative's `containerConcurrency`). Default 10.
    pub concurrency: NonZeroU32,
    /// Default 0: scale to zero.
    pub min: u32,
    /// Default 1.
    pub max: NonZeroU32,
    /// Default 60 s.
    pub idle: Duration,
    /// Default 60 s.
    pub start_timeout: Duration,
    /// Default 10 s.
    pub stop_grace: Duration,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
}

/// One checked entry of `services:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "ServiceEntryRaw")]
pub struct ServiceEntry {
    pub target: ServiceTarget,
    /// The running instance pool of a `command` service, set by `serve` (see
    /// [`super::OnDemand::start`]); `None` when only validating.
    pub endpoints: Option<Arc<dyn Endpoints>>,
    /// Where a `SinkBinding` puts its environment (a `command` service's pool).
    pub binding: Option<Arc<dyn super::Bindable>>,
    /// What a SinkBinding's selector matches.
    pub labels: BTreeMap<String, String>,
}

impl ServiceEntry {
    /// A service at a fixed URL.
    pub fn url(url: impl Into<String>) -> Self {
        ServiceEntry {
            target: ServiceTarget::Url(url.into()),
            endpoints: None,
            binding: None,
            labels: BTreeMap::new(),
        }
    }
}

/// Why a `services:` entry of the server config is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceEntryError {
    #[error(
        "set either url (a running service) or command (one cemesh starts on demand), not both"
    )]
    UrlAndCommand,
    #[error("expected url (a running service) or command (one cemesh starts on demand)")]
    NoTarget,
    #[error("{0} applies only to a service with a command, not to one with a url")]
    CommandOnly(&'static str),
    #[error("command must name a program, e.g. [\"python3\", \"app.py\"]")]
    EmptyCommand,
    #[error("port_env {0:?} is not an environment variable name")]
    PortEnv(String),
    #[error("readiness {0:?} must be a path starting with '/', e.g. /healthz")]
    Readiness(String),
    #[error("concurrency must be at least 1")]
    Concurrency,
    #[error("max {0} must be from 1 to {MAX_INSTANCES} instances")]
    Max(u32),
    #[error("min {min} must not be above max {max}")]
    MinAboveMax { min: u32, max: u32 },
    #[error("{0} must be above zero")]
    ZeroDuration(&'static str),
    #[error("{field}: {source}")]
    Duration {
        field: &'static str,
        source: crate::duration::ParseError,
    },
}

impl TryFrom<ServiceEntryRaw> for ServiceEntry {
    type Error = ServiceEntryError;

    fn try_from(raw: ServiceEntryRaw) -> Result<Self, ServiceEntryError> {
        let target = match (raw.url, raw.command) {
            (Some(_), Some(_)) => return Err(ServiceEntryError::UrlAndCommand),
            (None, None) => return Err(ServiceEntryError::NoTarget),
            (Some(url), None) => {
                let extra = [
                    ("port_env", raw.port_env.is_some()),
                    ("readiness", raw.readiness.is_some()),
                    ("concurrency", raw.concurrency.is_some()),
                    ("min", raw.min.is_some()),
                    ("max", raw.max.is_some()),
                    ("idle", raw.idle.is_some()),
                    ("start_timeout", raw.start_timeout.is_some()),
                    ("stop_grace", raw.stop_grace.is_some()),
                    ("env", !raw.env.is_empty()),
                    ("working_dir", raw.working_dir.is_some()),
                ];
                if let Some((name, _)) = extra.iter().find(|(_, set)| *set) {
                    return Err(ServiceEntryError::CommandOnly(name));
                }
                ServiceTarget::Url(url)
            }
            (None, Some(command)) => {
                if command.is_empty() || command[0].trim().is_empty() {
                    return Err(ServiceEntryError::EmptyCommand);
                }
                let port_env = raw.port_env.unwrap_or_else(|| "PORT".into());
                if port_env.is_empty()
                    || !port_env
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(ServiceEntryError::PortEnv(port_env));
                }
                if let Some(path) = &raw.readiness {
                    if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
                        return Err(ServiceEntryError::Readiness(path.clone()));
                    }
                }
                let concurrency = NonZeroU32::new(raw.concurrency.unwrap_or(10))
                    .ok_or(ServiceEntryError::Concurrency)?;
                let max = raw.max.unwrap_or(1);
                if !(1..=MAX_INSTANCES).contains(&max) {
                    return Err(ServiceEntryError::Max(max));
                }
                let min = raw.min.unwrap_or(0);
                if min > max {
                    return Err(ServiceEntryError::MinAboveMax { min, max });
                }
                let duration = |name: &'static str, v: Option<String>, default: u64| match v {
                    None => Ok(Duration::from_secs(default)),
                    Some(v) => match parse_humane(&v) {
                        Ok(d) if d.is_zero() => Err(ServiceEntryError::ZeroDuration(name)),
                        Ok(d) => Ok(d),
                        Err(source) => Err(ServiceEntryError::Duration {
                            field: name,
                            source,
                        }),
                    },
                };
                ServiceTarget::Command(CommandSpec {
                    command,
                    port_env,
                    readiness: raw.readiness,
                    concurrency,
                    min,
                    max: NonZeroU32::new(max).ok_or(ServiceEntryError::Max(max))?,
                    idle: duration("idle", raw.idle, 60)?,
                    start_timeout: duration("start_timeout", raw.start_timeout, 60)?,
                    stop_grace: duration("stop_grace", raw.stop_grace, 10)?,
                    env: raw.env,
                    working_dir: raw.working_dir,
                })
            }
        };
        Ok(ServiceEntry {
            target,
            endpoints: None,
            binding: None,
            labels: raw.labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ServiceEntry, String> {
        let raw: ServiceEntryRaw =
            crate::manifest::parser::typed(yaml, "a test").map_err(|e| e.message)?;
        ServiceEntry::try_from(raw).map_err(|e| e.to_string())
    }

    #[test]
    fn a_command_service_takes_defaults() {
        let e = parse("command: [python3, app.py]").unwrap();
        let ServiceTarget::Command(c) = e.target else {
            panic!("not a command")
        };
        assert_eq!(c.port_env, "PORT");
        assert_eq!(c.concurrency.get(), 10);
        assert_eq!((c.min, c.max.get()), (0, 1));
        assert_eq!(c.idle, Duration::from_secs(60));
        assert_eq!(c.readiness, None);
    }

    #[test]
    fn the_issue_example_parses() {
        let e = parse(
            "command: [\"python3\", \"thumbs.py\"]\nport_env: PORT\nreadiness: /healthz\nconcurrency: 10\nmin: 0\nmax: 4\nidle: 60s\n",
        )
        .unwrap();
        let ServiceTarget::Command(c) = e.target else {
            panic!("not a command")
        };
        assert_eq!(c.max.get(), 4);
        assert_eq!(c.readiness.as_deref(), Some("/healthz"));
    }

    #[test]
    fn bad_entries_name_the_problem() {
        for (yaml, want) in [
            ("url: http://x\ncommand: [a]", "not both"),
            ("{}", "expected url"),
            ("command: []", "must name a program"),
            (
                "command: [a]\nmin: 3\nmax: 2",
                "min 3 must not be above max 2",
            ),
            ("command: [a]\nmax: 0", "max 0"),
            ("command: [a]\nmax: 100000", "from 1 to 256"),
            ("command: [a]\nconcurrency: 0", "concurrency"),
            ("command: [a]\nreadiness: healthz", "starting with '/'"),
            ("command: [a]\nidle: soon", "idle"),
            ("command: [a]\nidle: 0s", "above zero"),
            ("command: [a]\nport_env: \"A B\"", "port_env"),
            ("url: http://x\nmax: 2", "max applies only"),
        ] {
            let err = parse(yaml).expect_err(yaml);
            assert!(err.contains(want), "{yaml:?}: {err:?} lacks {want:?}");
        }
        assert!(parse("command: [a]\nbogus: 1").is_err());
    }
}
