//! Runs the CloudEvents SQL conformance suite (the TCK YAML files of
//! cloudevents/spec `cesql/cesql_tck/`) against `filter::cesql`.
//!
//! The folder is `$CESQL_TCK_DIR`, or else `tests/cesql-tck` beside this file: the
//! vectors are a fixture of the repository (source, commit and licence in its
//! `SOURCE.txt`). A missing folder fails the test: a conformance run that found
//! nothing must not pass.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use cemesh_dispatcher::filter::cesql::{AttrValue, ErrorKind, EventAttributes, Expression, Value};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Suite {
    tests: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    expression: String,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    event: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    event_overrides: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An attribute value as the TCK's JSON events carry it.
#[derive(Debug, Clone)]
enum Attr {
    Bool(bool),
    Int(i32),
    Str(String),
}

/// A JSON CloudEvent seen as attributes (the `data*` members are not).
#[derive(Debug, Default)]
struct TckEvent(BTreeMap<String, Attr>);

impl TckEvent {
    /// A valid event: the four REQUIRED attributes.
    fn default_event() -> Self {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("specversion", "1.0"),
            ("id", "tck-id"),
            ("source", "tck-source"),
            ("type", "tck.type"),
        ] {
            m.insert(k.to_string(), Attr::Str(v.to_string()));
        }
        TckEvent(m)
    }

    fn apply(&mut self, attrs: &serde_json::Map<String, serde_json::Value>) {
        for (k, v) in attrs {
            if k == "data" || k == "data_base64" {
                continue;
            }
            let a = match v {
                serde_json::Value::Bool(b) => Attr::Bool(*b),
                serde_json::Value::Number(n) => {
                    match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                        Some(i) => Attr::Int(i),
                        None => Attr::Str(n.to_string()),
                    }
                }
                serde_json::Value::String(s) => Attr::Str(s.clone()),
                serde_json::Value::Null => {
                    self.0.remove(k);
                    continue;
                }
                other => Attr::Str(other.to_string()),
            };
            self.0.insert(k.to_ascii_lowercase(), a);
        }
    }
}

impl EventAttributes for TckEvent {
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
        self.0.get(name).map(|a| match a {
            Attr::Bool(b) => AttrValue::Boolean(*b),
            Attr::Int(i) => AttrValue::Integer(*i),
            Attr::Str(s) => AttrValue::String(Cow::Borrowed(s)),
        })
    }
}

/// The expected `result`, typed.
fn expected_value(v: &serde_json::Value) -> Result<Value<'static>, String> {
    match v {
        serde_json::Value::Bool(b) => Ok(Value::Boolean(*b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(Value::Integer)
            .ok_or_else(|| format!("result {n} is not a 32-bit integer")),
        serde_json::Value::String(s) => Ok(Value::String(Cow::Owned(s.clone()))),
        other => Err(format!("unsupported result {other:?}")),
    }
}

fn show(v: &Value<'_>) -> String {
    match v {
        Value::String(s) => format!("String({s:?})"),
        other => format!("{other:?}"),
    }
}

fn tck_dir() -> PathBuf {
    match std::env::var_os("CESQL_TCK_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cesql-tck"),
    }
}

/// Runs one case; `Err` describes the mismatch.
fn run_case(case: &Case) -> Result<(), String> {
    let mut event = TckEvent::default_event();
    if let Some(ev) = &case.event {
        event = TckEvent::default();
        event.apply(ev);
    }
    if let Some(ov) = &case.event_overrides {
        event.apply(ov);
    }
    let expected_value = case.result.as_ref().map(expected_value).transpose()?;
    let expected_error = case.error.as_deref();

    let parsed = Expression::parse(&case.expression);
    let (value, kinds, messages): (Value<'_>, Vec<ErrorKind>, Vec<String>) = match &parsed {
        Ok(expr) => {
            let eval = expr.evaluate(&event);
            let kinds = eval.errors().iter().map(|e| e.kind()).collect();
            let msgs = eval.errors().iter().map(|e| e.to_string()).collect();
            (eval.value().clone(), kinds, msgs)
        }
        // A parse failure is reported as `false` plus a parse error.
        Err(e) => (Value::Boolean(false), vec![e.kind()], vec![e.to_string()]),
    };

    let mut problems = String::new();
    if let Some(want) = &expected_value {
        if &value != want {
            let _ = write!(
                problems,
                "value: expected {}, got {}; ",
                show(want),
                show(&value)
            );
        }
    }
    match expected_error {
        Some(want) => {
            if kinds.is_empty() || kinds.iter().any(|k| k.as_str() != want) {
                let _ = write!(problems, "errors: expected only {want}, got {messages:?}; ");
            }
        }
        None => {
            if !kinds.is_empty() {
                let _ = write!(problems, "errors: expected none, got {messages:?}; ");
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[test]
fn cesql_tck() {
    let dir = tck_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "CESQL TCK folder {} is missing or unreadable ({e}); set CESQL_TCK_DIR",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.yaml TCK files in {}",
        dir.display()
    );

    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures = Vec::new();
    for path in &files {
        let file = path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let suite: Suite = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
        let (mut p, mut f) = (0usize, 0usize);
        for case in &suite.tests {
            match run_case(case) {
                Ok(()) => p += 1,
                Err(why) => {
                    f += 1;
                    failures.push(format!(
                        "{file}: {:?}\n    expression: {}\n    expected: result={:?} error={:?}\n    got: {why}",
                        case.name, case.expression, case.result, case.error
                    ));
                }
            }
        }
        println!("{file}: {p} passed, {f} failed");
        passed += p;
        failed += f;
    }
    for f in &failures {
        println!("FAILED {f}");
    }
    println!("{passed} passed, {failed} failed");
    assert_eq!(failed, 0, "{failed} CESQL TCK case(s) failed (see above)");
    assert!(passed > 0, "no TCK cases ran");
}
