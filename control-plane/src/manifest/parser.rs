//! The YAML parser every manifest, API request body and server config goes through:
//! serde-saphyr, with input budgets, so a hostile document is refused while it is read.
//!
//! It replaced serde_yaml 0.9.34: deprecated, on unsafe-libyaml (libyaml translated to
//! `unsafe` Rust by c2rust, unmaintained since 2024-03) and without limits of its own,
//! so every document needed a hand-written scan first (its time grew with the square of
//! the nesting depth). The candidates, measured on 2 shared (noisy) cores in a release
//! build, each document parsed to the crate's untyped value and to a Trigger-like
//! struct through `serde_path_to_error`:
//!
//! | | serde_yaml 0.9.34 | serde_norway 0.9.42 | serde_yaml_ng 0.10.0 | **serde-saphyr 2.2.0** |
//! |---|---|---|---|---|
//! | parser | unsafe-libyaml | unsafe-libyaml-norway | unsafe-libyaml | granit-parser; both `forbid(unsafe_code)` |
//! | last release | 2024-03 (deprecated) | 2024-12 | 2024-05 | 2026-11 |
//! | budgets | none (recursion 128) | none | none | depth, nodes, anchors, aliases, scalar bytes, events |
//! | 39 shipped documents | 1.5–2.1 ms | 1.6–2.1 ms | 1.6–2.3 ms | 3.0–4.6 ms |
//! | 5,000 Triggers, 2.9 MB | 0.24–0.28 s | 0.19–0.28 s | 0.15–0.30 s | 0.33–0.51 s |
//! | `[` × 100,000 (195 KiB) | > 120 s | 103 s | 119 s | refused in 0.3 ms (depth) |
//! | 9 levels of 9 aliases | refused in 33 ms | refused in 30 ms | refused in 52 ms | refused in 90 ms (nodes) |
//! | 100 aliases of a 900 KB scalar | accepted (90 MB) | accepted | accepted | refused in 3 ms (scalar bytes) |
//! | unknown field; wrong type | line:col, path | same | same | same line:col, path; wrong type says only "expected string scalar", "invalid u32" |
//! | duplicate key; unclosed `{` | line of the first key; the line after | same | same | line of the duplicate; line of the `{` |
//!
//! The forks are drop-in (same messages, same speed) but keep the `unsafe` C-derived
//! parser and the missing limits, so the scan would have stayed. serde-saphyr is about
//! twice as slow, which a config dir does not notice, and its type errors do not say
//! what was found; `typed` puts that back from the document, so messages read as
//! before (`spec.filter.attributes: invalid type: sequence, expected a map`). It has no
//! untyped tree; [`Value`] is ours.
//!
//! Scalars follow the YAML 1.2 core schema, as serde_yaml read them: `yes`/`no`,
//! `0755` and `1_000` are strings. Merge keys (`<<`) are expanded, as kubectl does.

use serde::de::DeserializeOwned;
use serde_path_to_error::{Path, Segment};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{Error, ExternalMessageSource, MessageFormatter as _, UserMessageFormatter};

use super::Value;

/// Largest document, in bytes; checked on the text (serde-saphyr bounds only what it
/// reads from a stream).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Deepest nesting of collections (a Trigger needs about 6).
pub const MAX_DEPTH: usize = 64;
/// Most anchors (`&a`) in a document.
pub const MAX_ANCHORS: usize = 100;
/// Most aliases (`*a`) in a document.
pub const MAX_ALIASES: usize = 100;
/// Most nodes (scalars, lists, maps), aliases expanded: a Trigger has about 40, a
/// Kubernetes Deployment a few hundred.
pub const MAX_NODES: usize = 100_000;

/// A document that could not be read: where, what and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct YamlError {
    /// 1-based, in the text given.
    pub line: Option<usize>,
    /// Field path such as `spec.filter.attributes`; empty when not known.
    pub path: String,
    pub message: String,
    /// Over one of the limits above, rather than malformed or mistyped.
    pub over_limit: bool,
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            flow_nesting_limit: MAX_DEPTH,
            max_anchors: MAX_ANCHORS,
            max_aliases: MAX_ALIASES,
            max_nodes: MAX_NODES,
            max_total_scalar_bytes: MAX_DOCUMENT_BYTES,
            max_documents: 1,
        },
    }
}

/// Checks the size of a document against [`MAX_DOCUMENT_BYTES`].
pub(crate) fn check_size(text: &str, what: &str) -> Result<(), YamlError> {
    if text.len() <= MAX_DOCUMENT_BYTES {
        return Ok(());
    }
    Err(YamlError {
        line: Some(1),
        path: String::new(),
        message: format!(
            "the document is {} bytes, over the limit of {MAX_DOCUMENT_BYTES} bytes (1 MiB) for {what}",
            text.len()
        ),
        over_limit: true,
    })
}

/// One YAML document (no `---` between documents) as an untyped tree. `what` names the
/// document in limit messages ("a manifest").
pub(crate) fn value(text: &str, what: &str) -> Result<Value, YamlError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| error(&e, None, text, what))
}

/// One YAML document as a `T`; errors name the field path and the line, and a value of
/// the wrong type is shown as serde_yaml showed it.
pub(crate) fn typed<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, YamlError> {
    let mut path = None;
    serde_saphyr::with_deserializer_from_str_with_options(text, options(), |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            path = Some(e.path().clone());
            e.into_inner()
        })
    })
    .map_err(|e| error(&e, path.as_ref(), text, what))
}

fn error(e: &Error, path: Option<&Path>, text: &str, what: &str) -> YamlError {
    let line = e
        .location()
        .and_then(|l| usize::try_from(l.line()).ok())
        .filter(|l| *l > 0);
    let path_text = path.map(field_path).unwrap_or_default();
    // The node the error is about, as written, when the error does not say.
    let found = || {
        let root = value(text, what).ok()?;
        node_at(&root, path?).cloned()
    };
    // Under an alias, the error is wrapped with where the alias and its anchor are.
    let mut inner = e;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let (message, over_limit) = match inner {
        Error::Budget { breach, .. } => (breach_message(breach, what), true),
        Error::ExternalMessage { source, .. }
            if matches!(&**source, ExternalMessageSource::Parser(s)
                if matches!(s.kind(), serde_saphyr::granit_parser::ErrorKind::RecursionLimitExceeded)) =>
        {
            (
                breach_message(
                    &BudgetBreach::Depth {
                        depth: MAX_DEPTH + 1,
                    },
                    what,
                ),
                true,
            )
        }
        Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. }
        | Error::AliasReplayCounterOverflow { .. } => {
            (format!("aliases expand to more than {what} may hold"), true)
        }
        Error::Unexpected { expected, .. } => (mismatch(found(), article(expected)), false),
        Error::InvalidScalar { ty, .. } => (mismatch(found(), ty), false),
        Error::NullIntoString { .. } => ("invalid type: null, expected a string".into(), false),
        Error::DuplicateMappingKey { key, .. } => (
            match key {
                Some(k) => format!("duplicate key {k:?}"),
                None => "duplicate key".into(),
            },
            false,
        ),
        other => (
            UserMessageFormatter.format_message(other).into_owned(),
            false,
        ),
    };
    YamlError {
        line,
        path: path_text,
        message,
        over_limit,
    }
}

fn breach_message(breach: &BudgetBreach, what: &str) -> String {
    match breach {
        BudgetBreach::Depth { .. } => {
            format!("nested deeper than {MAX_DEPTH} levels, the limit for {what}")
        }
        BudgetBreach::Anchors { .. } => {
            format!("more than {MAX_ANCHORS} anchors, the limit for {what}")
        }
        BudgetBreach::Aliases { .. } | BudgetBreach::AliasAnchorRatio { .. } => {
            format!("more than {MAX_ALIASES} aliases, the limit for {what}")
        }
        BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
            "more than {MAX_NODES} nodes (scalars, lists and maps, aliases expanded), the limit for {what}"
        ),
        BudgetBreach::ScalarBytes { .. } => format!(
            "more than {MAX_DOCUMENT_BYTES} bytes of text (aliases expanded), the limit for {what}"
        ),
        other => format!("over a limit for {what}: {other:?}"),
    }
}

/// serde-saphyr's name for what a node should have been, as serde says it.
fn article(expected: &str) -> &str {
    match expected {
        "string scalar" => "a string",
        "mapping start" => "a map",
        "sequence start" => "a sequence",
        "scalar" => "a scalar",
        other => other,
    }
}

fn mismatch(found: Option<Value>, expected: &str) -> String {
    match found {
        Some(v @ Value::Number(_)) => {
            format!("invalid value: {}, expected {expected}", v.unexpected())
        }
        Some(v) => format!("invalid type: {}, expected {expected}", v.unexpected()),
        None => format!("expected {expected}"),
    }
}

/// `path` as a field path: `spec.filter.attributes`, `spec.filters[1]`; the root, and
/// a key serde_path_to_error could not name (`?`), are left out.
fn field_path(path: &Path) -> String {
    let mut text = path.to_string();
    while let Some(rest) = text.strip_suffix('?') {
        text = rest.trim_end_matches('.').to_owned();
    }
    if text == "." {
        text.clear();
    }
    text
}

/// The node at `path` (as serde_path_to_error records it) in `root`.
fn node_at<'v>(root: &'v Value, path: &Path) -> Option<&'v Value> {
    let mut node = root;
    for segment in path.iter() {
        node = match segment {
            Segment::Seq { index } => node.as_sequence()?.get(*index)?,
            Segment::Map { key } => {
                node.as_mapping()?
                    .iter()
                    .find(|(k, _)| key_text(k).as_deref() == Some(key.as_str()))?
                    .1
            }
            _ => return None,
        };
    }
    Some(node)
}

fn key_text(key: &Value) -> Option<String> {
    match key {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use serde::Deserialize;

    use super::*;

    const WHAT: &str = "a manifest";

    fn refused(text: &str) -> YamlError {
        let started = Instant::now();
        let e = value(text, WHAT).expect_err("over a limit");
        // Generous (debug build, shared cores): serde_yaml took 24 s to refuse
        // `[` × 100,000; the budgets stop it in microseconds, a 9^9 alias bomb in ~0.1 s
        // (release).
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(e.over_limit, "{e:?}");
        e
    }

    #[test]
    fn deep_flow_collections_are_refused_where_they_go_too_deep() {
        let deep = format!("a: b\nc: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let e = refused(&deep);
        assert_eq!(e.line, Some(2));
        assert_eq!(
            e.message,
            "nested deeper than 64 levels, the limit for a manifest"
        );
        // The top-level map is a level: 63 more fit.
        let ok = format!("c: {}{}\n", "[".repeat(63), "]".repeat(63));
        assert!(value(&ok, WHAT).is_ok());
        let over = format!("c: {}{}\n", "{a: ".repeat(64), "}".repeat(64));
        assert_eq!(refused(&over).line, Some(1));
        // Flow levels are also capped by the scanner, which counts only them: the 65th
        // `[` is on line 66.
        let lines = format!("c:\n{}{}", "  [\n".repeat(80), "  ]\n".repeat(80));
        assert_eq!(refused(&lines).line, Some(66));
    }

    #[test]
    fn deep_block_collections_are_refused() {
        let compact = format!("{}x\n", "- ".repeat(100_000));
        assert_eq!(refused(&compact).line, Some(1));
        let mut nested = String::new();
        for i in 0..70 {
            nested.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        assert_eq!(refused(&nested).line, Some(65));
    }

    #[test]
    fn brackets_in_scalars_and_comments_are_not_levels() {
        let brackets = "[".repeat(200);
        let text = format!(
            "a: \"{brackets}\"\nb: '{brackets} it''s'\nc: x{brackets}\n# {brackets}\nd: |\n  {brackets}\n  - - - - -\n\n  {brackets}\ne: >-\n    {brackets}\nf: 1 # {brackets}\ng: \"multi\n  line {brackets}\"\nh: [\"{brackets}\", '{brackets}']\n"
        );
        assert!(value(&text, WHAT).is_ok());
    }

    #[test]
    fn anchors_aliases_and_what_they_expand_to_are_limited() {
        let mut anchors = String::new();
        for i in 0..120 {
            anchors.push_str(&format!("a{i}: &a{i} x\n"));
        }
        let e = refused(&anchors);
        assert_eq!(e.message, "more than 100 anchors, the limit for a manifest");
        assert_eq!(e.line, Some(101));

        let aliases = format!("a: &a x\nb: [{}]\n", vec!["*a"; 120].join(", "));
        let e = refused(&aliases);
        assert_eq!(e.message, "more than 100 aliases, the limit for a manifest");

        // Nine levels of nine aliases: 9^9 nodes from 1 KiB.
        let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        let mut prev = 'a';
        for name in 'b'..='i' {
            laughs.push_str(&format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{prev}"); 9].join(",")
            ));
            prev = name;
        }
        let e = refused(&laughs);
        assert!(e.message.starts_with("more than 100000 nodes"), "{e:?}");

        // Few aliases of one large scalar.
        let big = format!(
            "a: &a \"{}\"\nb: [{}]\n",
            "x".repeat(100_000),
            vec!["*a"; 20].join(",")
        );
        let e = refused(&big);
        assert!(
            e.message.starts_with("more than 1048576 bytes of text"),
            "{e:?}"
        );

        assert!(value("a: &x 1\nb: *x\nc: \"*y &z\"\nd: a*b&c\n", WHAT).is_ok());
    }

    #[test]
    fn large_documents_are_refused() {
        let text = format!("a: \"{}\"\n", "x".repeat(MAX_DOCUMENT_BYTES));
        let e = check_size(&text, WHAT).unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(
            e.message.contains("over the limit of 1048576 bytes"),
            "{e:?}"
        );
        assert!(check_size("a: b\n", WHAT).is_ok());
    }

    /// Every YAML file shipped with cemesh (examples, deploy files with manifests in
    /// ConfigMaps) reads within the limits.
    #[test]
    fn shipped_yaml_passes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seen = 0;
        let mut dirs = vec![root.join("examples"), root.join("deploy")];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for doc in super::super::split_documents(&text) {
                        check_size(doc.text, WHAT).unwrap();
                        if let Err(e) = value(doc.text, WHAT) {
                            panic!("{}: document {}: {e:?}", p.display(), doc.index);
                        }
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen > 0);
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Spec {
        #[serde(default)]
        name: String,
        retry: Option<u32>,
        attributes: Option<BTreeMap<String, String>>,
        items: Option<Vec<String>>,
    }

    fn typed_error(text: &str) -> YamlError {
        typed::<Spec>(text, WHAT).expect_err("a mistake")
    }

    /// Each common mistake: the line, the field and what was found.
    #[test]
    fn mistakes_name_the_line_the_field_and_what_was_found() {
        #[rustfmt::skip]
        let cases: &[(&str, usize, &str, &str)] = &[
            ("name: a\nretri: 3\n", 2, "retri", "unknown field `retri`, expected one of name, retry, attributes, items"),
            ("name: a\nattributes: [type, order]\n", 2, "attributes", "invalid type: sequence, expected a map"),
            ("attributes:\n  type: [1]\n", 2, "attributes.type", "invalid type: sequence, expected a string"),
            ("attributes:\n  type: {a: b}\n", 2, "attributes.type", "invalid type: map, expected a string"),
            ("retry: three\n", 1, "retry", "invalid type: string \"three\", expected u32"),
            ("retry: -1\n", 1, "retry", "invalid value: integer `-1`, expected u32"),
            ("retry: 1.5\n", 1, "retry", "invalid value: floating point `1.5`, expected u32"),
            ("items: a\n", 1, "items", "invalid type: string \"a\", expected a sequence"),
            ("name: ~\n", 1, "name", "invalid type: null, expected a string"),
            ("name: a\nname: b\n", 2, "", "duplicate key \"name\""),
        ];
        for (text, line, path, message) in cases {
            let e = typed_error(text);
            assert_eq!(
                (e.line, e.path.as_str(), e.message.as_str()),
                (Some(*line), *path, *message),
                "{text}"
            );
            assert!(!e.over_limit);
        }
        // Numbers and booleans where a string is expected are read as text, as before.
        let s: Spec = typed("attributes: {a: 1, b: true}\n", WHAT).unwrap();
        assert_eq!(s.attributes.unwrap()["a"], "1");
    }

    #[test]
    fn syntax_errors_have_lines() {
        #[rustfmt::skip]
        let cases: &[(&str, usize, &str)] = &[
            ("name: a\n   retry: 3\n", 2, "mapping values are not allowed in this context"),
            ("name: a\nattributes:\n\ttype: a\n", 3, "tabs disallowed within this context (block indentation)"),
            ("name: a\nattributes: {type: a\n", 2, "unclosed bracket '{'"),
            ("name: [a\n", 1, "unclosed bracket '['"),
            ("name: *nothing\n", 1, "reference to unknown value"),
        ];
        for (text, line, message) in cases {
            let e = value(text, WHAT).expect_err(text);
            assert_eq!(
                (e.line, e.message.as_str()),
                (Some(*line), *message),
                "{text}"
            );
        }
    }
}
