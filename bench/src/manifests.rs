//! The Knative manifests of a bench run: Broker `default/bench` and K Triggers, each
//! delivering to its own sink path `/t/{i}` so the sink counts per trigger. The same
//! text is written for the embedded broker and printed (`--print-manifests`) for a
//! deployed one.

use std::fmt::Write as _;

use crate::{FilterKind, MATCH_ATTRIBUTE};

pub const NAMESPACE: &str = "default";
pub const BROKER: &str = "bench";

pub struct ManifestOptions<'a> {
    pub channel: &'a str,
    /// sled's `cemesh.dev/durability`.
    pub durability: Option<&'a str>,
    pub triggers: usize,
    pub filter: FilterKind,
    /// True when only tagged events match (`--match-ratio` below 1).
    pub filter_on_tag: bool,
    pub parallelism: Option<u32>,
    /// Base URL of the sink, e.g. `http://127.0.0.1:4000`.
    pub sink_base: &'a str,
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
    for i in 0..o.triggers {
        let _ = writeln!(
            y,
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: bench-{i}\n  namespace: {NAMESPACE}"
        );
        if let Some(p) = o.parallelism {
            let _ = writeln!(y, "  annotations:\n    cemesh.dev/parallelism: \"{p}\"");
        }
        let _ = writeln!(y, "spec:\n  broker: {BROKER}");
        y.push_str(&filter_yaml(o.filter, o.filter_on_tag));
        let _ = writeln!(y, "  subscriber:\n    uri: {}/t/{i}", o.sink_base);
    }
    y
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
        ] {
            let text = render(&ManifestOptions {
                channel: "sled",
                durability: Some("interval(10ms)"),
                triggers: 3,
                filter: kind,
                filter_on_tag: true,
                parallelism: Some(8),
                sink_base: "http://127.0.0.1:9",
            });
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("bench.yaml"), &text).expect("write");
            let (resources, errors) = cemesh_control::manifest::load_dir(dir.path());
            assert!(errors.is_empty(), "{kind:?}: {errors:?}\n{text}");
            assert_eq!(resources.len(), 4, "{kind:?}\n{text}");
            assert!(text.contains("uri: http://127.0.0.1:9/t/2"), "{text}");
        }
    }
}
