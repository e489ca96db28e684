//! Knative manifests: every `*.yaml`/`*.yml` in the config dir, multi-document, with
//! `eventing.knative.dev/v1` `Broker` and `Trigger` read as they are.
//!
//! Errors name the file, the document, the resource, the line and the field path, and
//! say what was expected, so a user fixes everything in one go. Each document is read
//! by [`parser`] (serde-saphyr, with input budgets; its module doc says why that
//! parser) into a [`Value`] and then into its kind's typed manifest.

mod access;
mod broker;
pub mod channel;
mod compile;
mod delivery;
pub mod eventtype;
mod filters;
pub mod flows;
mod kinds;
mod messaging;
pub mod parser;
mod policy;
pub mod sources;
mod sourcing;
mod trigger;
mod validate;
mod value;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use access::PolicyDesired;
pub use broker::{
    BrokerManifest, BrokerSpec, Note, KAFKA_PARTITIONS_ANNOTATION, KAFKA_REPLICATION_ANNOTATION,
};
pub use compile::compile;
pub use delivery::{DeliveryManifest, Destination, KReference};
pub use kinds::{Kind, KindInfo, KINDS};
pub use policy::{EventPolicyManifest, EventPolicySpec, EVENTING_V1ALPHA1};
pub use trigger::{TriggerFilter, TriggerManifest, TriggerSpec};
pub use validate::{
    AddressKind, BrokerDesired, ChannelOptions, Desired, ResolveContext, TriggerDesired,
};
pub use value::{Mapping, Value};

pub const EVENTING_V1: &str = "eventing.knative.dev/v1";

/// Written by the admin API into every resource it shows (`file:...` or `api`), so
/// `get -o yaml` output applies again; never read.
pub const OWNER_ANNOTATION: &str = "cemesh.dev/owner";

/// `eventing.knative.dev/v1 Broker, eventing.knative.dev/v1 Trigger, ...`: every row of
/// [`KINDS`]. Every reader (config dir, `apply`, `validate`, the admin API) refuses any
/// other kind through [`unsupported_kind`].
pub fn supported_kinds() -> String {
    KINDS
        .iter()
        .map(|k| format!("{} {}", k.api_version, k.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kinds cemesh will not run, and why.
const NOT_RUN: &[(&str, &str)] = &[(
    "ApiServerSource",
    "it watches a Kubernetes API server, which cemesh does not need or have; a ContainerSource program that POSTs to $K_SINK can send such events",
)];

/// Why a document of `api_version`/`kind` is not run: a kind cemesh knows under
/// another version gets that version named.
pub fn unsupported_kind(api_version: &str, kind: &str) -> String {
    if let Some(why) = NOT_RUN.iter().find(|(k, _)| *k == kind).map(|(_, why)| why) {
        return format!("kind {kind} ({api_version}) is not run by cemesh: {why}");
    }
    match KINDS.iter().find(|k| k.name == kind).map(|k| k.api_version) {
        Some(api) => {
            format!("{kind} {api_version} is not supported: cemesh runs {kind} as apiVersion {api}")
        }
        None => format!(
            "kind {kind} ({api_version}) is not run by cemesh; supported kinds: {}",
            supported_kinds()
        ),
    }
}

/// Kubernetes object metadata; fields cemesh does not use (labels, uid, ...) are
/// ignored, as Kubernetes tools expect.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// What `EventPolicy` selectors match.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub generation: Option<i64>,
}

impl Metadata {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// Name and namespace must be DNS labels; the error is `(field path, message)`.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        if !is_dns_label(&self.name) {
            return Err((
                "metadata.name".into(),
                format!("{:?} must be a DNS label: 1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit", self.name),
            ));
        }
        if !is_dns_label(self.namespace()) {
            return Err((
                "metadata.namespace".into(),
                format!("{:?} must be a DNS label", self.namespace()),
            ));
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A resource read from a file, with where it came from.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub file: PathBuf,
    /// 1-based index of the document in its file.
    pub document: usize,
    pub value: T,
    /// The document as written, for the admin API to show back.
    pub raw: Value,
}

impl<T> Located<T> {
    /// An error about this resource at `path`.
    pub fn error(
        &self,
        resource: String,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError {
            file: self.file.clone(),
            document: self.document,
            resource: Some(resource),
            line: None,
            path: path.into(),
            message: message.into(),
            unsupported_kind: false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Resource {
    Broker(BrokerManifest),
    Trigger(TriggerManifest),
    EventPolicy(EventPolicyManifest),
    /// `Channel`, `InMemoryChannel` or `KafkaChannel`.
    Channel(channel::ChannelManifest),
    Subscription(Box<channel::SubscriptionManifest>),
    Sequence(flows::SequenceManifest),
    Parallel(flows::ParallelManifest),
    PingSource(sources::PingSourceManifest),
    ContainerSource(sources::ContainerSourceManifest),
    SinkBinding(sources::SinkBindingManifest),
    KafkaSource(sources::KafkaSourceManifest),
    EventType(eventtype::EventTypeManifest),
}

/// A problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    pub document: usize,
    /// `Trigger default/orders`, when known.
    pub resource: Option<String>,
    pub line: Option<usize>,
    /// Field path such as `spec.filter.attributes`; empty for the whole document.
    pub path: String,
    pub message: String,
    /// The document is well formed but of a kind cemesh does not run: a problem of
    /// that resource (reported, not run), not a broken file.
    pub unsupported_kind: bool,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)?;
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        if let Some(l) = self.line {
            write!(f, ", line {l}")?;
        }
        if !self.path.is_empty() && self.path != "." {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Loads every manifest in `dir`. A missing dir is empty. Files are read in name
/// order so errors and start-up are deterministic.
pub fn load_dir(dir: &Path) -> (Vec<Located<Resource>>, Vec<ManifestError>) {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %dir.display(), "Config dir does not exist; starting with no brokers");
            return (resources, errors);
        }
        Err(e) => {
            errors.push(ManifestError {
                file: dir.to_owned(),
                document: 0,
                resource: None,
                line: None,
                path: String::new(),
                message: format!("cannot read the config dir: {e}"),
                unsupported_kind: false,
            });
            return (resources, errors);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let (r, e) = parse_str(&file, &text);
                resources.extend(r);
                errors.extend(e);
            }
            Err(e) => errors.push(ManifestError {
                file: file.clone(),
                document: 0,
                resource: None,
                line: None,
                path: String::new(),
                message: format!("cannot read: {e}"),
                unsupported_kind: false,
            }),
        }
    }
    (resources, errors)
}

/// One YAML document of a file: its text and the line it starts on.
struct Document<'a> {
    index: usize,
    first_line: usize,
    text: &'a str,
}

fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if is_marker {
            docs.push((start, offset, first_line));
            start = offset + line.len();
            first_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start, text.len(), first_line));
    docs.into_iter()
        .filter(|&(s, e, _)| {
            text[s..e].lines().any(|l| {
                !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "..."
            })
        })
        .enumerate()
        .map(|(i, (s, e, first_line))| Document {
            index: i + 1,
            first_line,
            text: &text[s..e],
        })
        .collect()
}

/// What limit messages call a document.
const MANIFEST: &str = "a manifest";

/// Every document of `text` (a file's, or stdin's) as an untyped tree, within the
/// [`parser`]'s budgets but not its 1 MiB size (a `kind: List` that `get -o json` wrote
/// may be larger; its items are then read by [`parse_str`]). The first document that
/// cannot be read is the error.
pub fn parse_values(file: &Path, text: &str) -> Result<Vec<Value>, Box<ManifestError>> {
    split_documents(text)
        .into_iter()
        .map(|doc| {
            parser::value(doc.text, MANIFEST).map_err(|e| {
                Box::new(ManifestError {
                    file: file.to_owned(),
                    document: doc.index,
                    resource: None,
                    line: e.line.map(|l| l + doc.first_line - 1),
                    path: String::new(),
                    message: e.message,
                    unsupported_kind: false,
                })
            })
        })
        .collect()
}

/// Parses one file's text into resources and errors. Each document is read within the
/// [`parser`]'s limits (size, nesting depth, anchors, aliases, nodes), so a hostile one
/// is refused in time linear in its size. CPU-bound: async callers run it on the
/// blocking pool.
pub fn parse_str(file: &Path, text: &str) -> (Vec<Located<Resource>>, Vec<ManifestError>) {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for doc in split_documents(text) {
        let err = |resource: Option<String>, line: Option<usize>, path: String, message: String| {
            ManifestError {
                file: file.to_owned(),
                document: doc.index,
                resource,
                line: line.map(|l| l + doc.first_line - 1),
                path,
                message,
                unsupported_kind: false,
            }
        };
        let read =
            parser::check_size(doc.text, MANIFEST).and_then(|()| parser::value(doc.text, MANIFEST));
        let value = match read {
            Ok(v) => v,
            Err(e) if e.over_limit => {
                errors.push(err(None, e.line, String::new(), e.message));
                continue;
            }
            Err(e) => {
                let message = format!("invalid YAML: {}", e.message);
                errors.push(err(None, e.line, String::new(), message));
                continue;
            }
        };
        let Some(map) = value.as_mapping() else {
            errors.push(err(
                None,
                Some(1),
                String::new(),
                "expected a mapping with apiVersion and kind".into(),
            ));
            continue;
        };
        let field = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
            errors.push(err(
                None,
                Some(1),
                String::new(),
                "expected apiVersion and kind (strings)".into(),
            ));
            continue;
        };
        let meta = map.get("metadata").and_then(|m| m.as_mapping());
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let ns = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let label = format!("{kind} {ns}/{name}");
        let row = KINDS.iter().find(|k| {
            (k.api_version == api_version || k.also.contains(&api_version.as_str()))
                && k.name == kind
        });
        let resource = match row {
            Some(row) => (row.parse)(doc.text),
            None => {
                let kind_line = doc.text.lines().position(|l| l.starts_with("kind:"));
                let mut e = err(
                    Some(label),
                    Some(kind_line.map_or(1, |i| i + 1)),
                    "kind".into(),
                    unsupported_kind(&api_version, &kind),
                );
                e.unsupported_kind = true;
                errors.push(e);
                continue;
            }
        };
        match resource {
            Ok(r) => resources.push(Located {
                file: file.to_owned(),
                document: doc.index,
                value: r,
                raw: value,
            }),
            Err((line, path, message)) => errors.push(err(Some(label), line, path, message)),
        }
    }
    (resources, errors)
}

type TypedError = (Option<usize>, String, String);

fn typed<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, TypedError> {
    parser::typed(text, MANIFEST).map_err(|e| (e.line, e.path, e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_lines() {
        let text = "# c\n---\n---\n\n---\napiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n";
        let (r, e) = parse_str(Path::new("x.yaml"), text);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].document, 1);
    }

    #[test]
    fn kinds_cemesh_does_not_run_are_problems_of_their_own() {
        let text = "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata:\n  name: c\n---\napiVersion: eventing.knative.dev/v1beta1\nkind: Trigger\nmetadata:\n  name: t\n";
        let (r, e) = parse_str(Path::new("k.yaml"), text);
        assert!(r.is_empty());
        assert_eq!(e.len(), 2);
        assert!(e.iter().all(|e| e.unsupported_kind));
        let channel = e[0].to_string();
        assert!(
            channel.starts_with("k.yaml: document 1 (ApiServerSource default/c), line 2: kind: kind ApiServerSource (sources.knative.dev/v1) is not run by cemesh: it watches a Kubernetes API server"),
            "{channel}"
        );
        let trigger = e[1].to_string();
        assert!(
            trigger.ends_with("Trigger eventing.knative.dev/v1beta1 is not supported: cemesh runs Trigger as apiVersion eventing.knative.dev/v1"),
            "{trigger}"
        );
    }

    #[test]
    fn errors_name_file_document_line_and_field() {
        let text = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: b\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: b\n  subscriber:\n    uri: http://x\n  filter:\n    attributes:\n      type: [1]\n";
        let (_, e) = parse_str(Path::new("t.yaml"), text);
        assert_eq!(e.len(), 1);
        let msg = e[0].to_string();
        assert!(
            msg.starts_with(
                "t.yaml: document 2 (Trigger default/t), line 16: spec.filter.attributes.type: "
            ),
            "{msg}"
        );
        assert!(msg.contains("expected a string"), "{msg}");
        assert_eq!(
            msg.matches("spec.filter.attributes.type").count(),
            1,
            "{msg}"
        );
    }

    #[test]
    fn unknown_spec_fields_are_reported() {
        let text = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: b\n  subscriber:\n    uri: http://x\n  filtre: {}\n";
        let (_, e) = parse_str(Path::new("t.yaml"), text);
        let msg = e[0].to_string();
        assert!(msg.contains("unknown field `filtre`"), "{msg}");
        assert!(msg.contains("line 9"), "{msg}");
    }

    #[test]
    fn documents_over_the_limits_are_refused_at_once() {
        let deep = format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: b}}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nspec: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let started = std::time::Instant::now();
        let (r, e) = parse_str(Path::new("deep.yaml"), &deep);
        let took = started.elapsed();
        assert_eq!(r.len(), 1);
        assert_eq!(e.len(), 1);
        assert_eq!(
            e[0].to_string(),
            "deep.yaml: document 2, line 7: nested deeper than 64 levels, the limit for a manifest"
        );
        // Generous: serde_yaml took 24 s on this document; the budget stops it in
        // microseconds.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }

    /// serde_yaml, behind the old pre-scan (100 anchors and aliases together), took
    /// this 60 KB document as 1.26 MB of annotations; the parser's budget refuses it
    /// where the text goes over 1 MiB, naming file, document and line.
    #[test]
    fn aliases_expanding_past_the_limit_are_refused_at_the_line_that_crosses_it() {
        let mut text = format!(
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: b}}\n---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\n  annotations:\n    big: &big \"{}\"\n",
            "x".repeat(60_000)
        );
        for i in 0..20 {
            text.push_str(&format!("    a{i}: *big\n"));
        }
        text.push_str("spec:\n  broker: b\n");
        let started = std::time::Instant::now();
        let (r, e) = parse_str(Path::new("laughs.yaml"), &text);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(r.len(), 1);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].to_string(),
            "laughs.yaml: document 2, line 27: more than 1048576 bytes of text (aliases expanded), the limit for a manifest"
        );
    }

    #[test]
    fn syntax_errors_have_absolute_lines() {
        let text = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n---\nkind: [\n";
        let (_, e) = parse_str(Path::new("s.yaml"), text);
        assert_eq!(e.len(), 1);
        assert!(e[0].line.is_some_and(|l| l >= 4), "{:?}", e[0]);
    }
}
