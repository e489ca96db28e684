//! The Knative manifests of a bench run: Broker `default/bench` and K Triggers, each
//! delivering to its own sink path `/t/{i}` so the sink counts per trigger. The same
//! text is written for the embedded broker and printed (`--print-manifests`) for a
//! deployed one.

use std::fmt::Write as _;
use std::time::Duration;

use crate::{FilterKind, MATCH_ATTRIBUTE};

pub const NAMESPACE: &str = "default";
pub const BROKER: &str = "bench";

pub struct ManifestOptions<'a> {
    pub channel: &'a str,
    /// sled's `cemesh.dev/durability`.
    pub durability: Option<&'a str>,
    /// `cemesh.dev/dedup-window`.
    pub dedup_window: Option<&'a str>,
    /// `cemesh.dev/backpressure-window`.
    pub backpressure_window: Option<&'a str>,
    /// `cemesh.dev/backpressure-hold`.
    pub backpressure_hold: Option<&'a str>,
    /// `cemesh.dev/journal` (false: `off`).
    pub journal: bool,
    pub triggers: usize,
    pub filter: FilterKind,
    /// True when only tagged events match (`--match-ratio` below 1).
    pub filter_on_tag: bool,
    pub parallelism: Option<u32>,
    /// Base URL of the sink, e.g. `http://127.0.0.1:4000`.
    pub sink_base: &'a str,
    /// A soak's delivery settings: retries, backoff, a dead-letter sink per trigger.
    pub soak: Option<&'a SoakManifest>,
}

/// What a soak adds to each trigger: `spec.delivery` with retries, exponential
/// backoff and a dead-letter sink at the sink's `/dl/{i}`, and its own parallelism.
#[derive(Debug, Clone)]
pub struct SoakManifest {
    /// `spec.delivery.retry`: attempts after the first.
    pub retry: u32,
    /// `spec.delivery.backoffDelay` (exponential policy).
    pub backoff_delay: Duration,
    /// Parallelism per trigger, where it differs from `ManifestOptions::parallelism`.
    pub parallelism: Vec<Option<u32>>,
}

pub fn render(o: &ManifestOptions<'_>) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {BROKER}\n  namespace: {NAMESPACE}\n  annotations:\n    cemesh.dev/channel: {}",
        o.channel
    );
    if let Some(d) = o.durability {
        let _ = writeln!(y, "    cemesh.dev/durability: {d:?}");
    }
    if let Some(w) = o.dedup_window {
        let _ = writeln!(y, "    cemesh.dev/dedup-window: {w:?}");
    }
    if let Some(w) = o.backpressure_window {
        let _ = writeln!(y, "    cemesh.dev/backpressure-window: {w:?}");
    }
    if let Some(h) = o.backpressure_hold {
        let _ = writeln!(y, "    cemesh.dev/backpressure-hold: {h:?}");
    }
    if !o.journal {
        let _ = writeln!(y, "    cemesh.dev/journal: \"off\"");
    }
    for i in 0..o.triggers {
        let _ = writeln!(
            y,
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bench-{i}\n  namespace: {NAMESPACE}"
        );
        let parallelism = o
            .soak
            .and_then(|s| s.parallelism.get(i).copied().flatten())
            .or(o.parallelism);
        if let Some(p) = parallelism {
            let _ = writeln!(y, "  annotations:\n    cemesh.dev/parallelism: \"{p}\"");
        }
        let _ = writeln!(y, "spec:\n  broker: {BROKER}");
        y.push_str(&filter_yaml(o.filter, o.filter_on_tag));
        let _ = writeln!(y, "  subscriber:\n    uri: {}/t/{i}", o.sink_base);
        if let Some(s) = o.soak {
            let _ = writeln!(
                y,
                "  delivery:\n    retry: {}\n    backoffPolicy: exponential\n    backoffDelay: {}\n    deadLetterSink:\n      uri: {}/dl/{i}",
                s.retry,
                iso8601(s.backoff_delay),
                o.sink_base
            );
        }
    }
    y
}

/// A duration as ISO 8601 seconds with millisecond precision, e.g. `PT0.050S`.
fn iso8601(d: Duration) -> String {
    format!("PT{}.{:03}S", d.as_secs(), d.subsec_millis())
}

/// The trigger's filter. Every kind checks the event type, and the match tag when
/// only a fraction of events should pass, so each kind does comparable work.
fn filter_yaml(kind: FilterKind, on_tag: bool) -> String {
    let tag = MATCH_ATTRIBUTE;
    match kind {
        FilterKind::None => String::new(),
        FilterKind::Attributes => {
            let mut s = "  filter:\n    attributes:\n      type: dev.cemesh.bench\n".to_owned();
            if on_tag {
                let _ = writeln!(s, "      {tag}: \"yes\"");
            }
            s
        }
        FilterKind::Exact => {
            let mut s = "  filters:\n    - exact:\n        type: dev.cemesh.bench\n".to_owned();
            if on_tag {
                let _ = writeln!(s, "        {tag}: \"yes\"");
            }
            s
        }
        FilterKind::Prefix => {
            let mut s = "  filters:\n    - prefix:\n        type: dev.cemesh.\n".to_owned();
            if on_tag {
                let _ = writeln!(s, "        {tag}: \"y\"");
            }
            s
        }
        FilterKind::Cesql => {
            let mut expr = "type = 'dev.cemesh.bench'".to_owned();
            if on_tag {
                let _ = write!(expr, " AND {tag} = 'yes'");
            }
            format!("  filters:\n    - cesql: \"{expr}\"\n")
        }
        FilterKind::Data => {
            let mut s = "  filters:\n    - exact:\n        type: dev.cemesh.bench\n".to_owned();
            if on_tag {
                let _ = writeln!(s, "        {tag}: \"yes\"");
            }
            s.push_str("    - data:\n        order.kind: bench\n        order.total: {gt: 10}\n        order.items[*].sku: {prefix: B}\n");
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rendered manifests load through the same code as `cemesh serve --config-dir`.
    #[test]
    fn manifests_load_as_knative_resources() {
        for kind in [
            FilterKind::None,
            FilterKind::Attributes,
            FilterKind::Exact,
            FilterKind::Prefix,
            FilterKind::Cesql,
            FilterKind::Data,
        ] {
            let text = render(&ManifestOptions {
                channel: "sled",
                durability: Some("interval(10ms)"),
                dedup_window: Some("10m"),
                backpressure_window: Some("1MiB"),
                backpressure_hold: Some("250ms"),
                journal: false,
                triggers: 3,
                filter: kind,
                filter_on_tag: true,
                parallelism: Some(8),
                sink_base: "http://127.0.0.1:9",
                soak: None,
            });
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("bench.yaml"), &text).expect("write");
            let (resources, errors) = cemesh_control::manifest::load_dir(dir.path());
            assert!(errors.is_empty(), "{kind:?}: {errors:?}\n{text}");
            assert_eq!(resources.len(), 4, "{kind:?}\n{text}");
            assert!(text.contains("uri: http://127.0.0.1:9/t/2"), "{text}");
        }
    }

    /// A soak's triggers: each its dead-letter sink, retries and backoff, and the
    /// slow one its own parallelism; the broker's validation accepts them as is.
    #[test]
    fn soak_manifests_carry_delivery_and_load() {
        let soak = SoakManifest {
            retry: 2,
            backoff_delay: Duration::from_millis(50),
            parallelism: vec![None, None, Some(300)],
        };
        let text = render(&ManifestOptions {
            channel: "sled",
            durability: None,
            dedup_window: None,
            backpressure_window: None,
            backpressure_hold: None,
            journal: true,
            triggers: 3,
            filter: FilterKind::Attributes,
            filter_on_tag: false,
            parallelism: None,
            sink_base: "http://127.0.0.1:9",
            soak: Some(&soak),
        });
        assert!(text.contains("backoffDelay: PT0.050S"), "{text}");
        assert!(text.contains("uri: http://127.0.0.1:9/dl/1"), "{text}");
        assert_eq!(text.matches("cemesh.dev/parallelism").count(), 1, "{text}");
        assert!(text.contains("cemesh.dev/parallelism: \"300\""), "{text}");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bench.yaml"), &text).expect("write");
        let (resources, errors) = cemesh_control::manifest::load_dir(dir.path());
        assert!(errors.is_empty(), "{errors:?}\n{text}");
        assert_eq!(resources.len(), 4, "{text}");
        let services = std::collections::BTreeMap::new();
        let desired = cemesh_control::manifest::compile(
            &resources,
            &cemesh_control::manifest::ResolveContext {
                ingress_base: "http://127.0.0.1:8080".into(),
                service_url_template: "",
                services: &services,
                images: &std::collections::BTreeMap::new(),
                default_channel: cemesh_control::config::ChannelKind::Sled,
                default_max_body: 1 << 20,
            },
        );
        assert!(desired.problems.is_empty(), "{:?}", desired.problems);
        let triggers: Vec<_> = desired.triggers.values().collect();
        assert_eq!(triggers.len(), 3);
        for (i, t) in triggers.iter().enumerate() {
            let d = &t.runtime.delivery;
            assert_eq!(d.retry, 2);
            assert_eq!(d.backoff_delay, Duration::from_millis(50));
            let dls = d.dead_letter_sink.as_ref().expect("dead-letter sink");
            assert_eq!(dls.as_str(), format!("http://127.0.0.1:9/dl/{i}"));
        }
        assert_eq!(triggers[2].runtime.parallelism, 300);
        assert_eq!(iso8601(Duration::from_millis(1_500)), "PT1.500S");
    }
}
