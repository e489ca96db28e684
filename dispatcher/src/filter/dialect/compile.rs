//! Typed filter specs to the compiled tree, checking what they mean on the way (see
//! the module docs of `dialect` for what is refused and why). The first problem found
//! is returned, with the path of the node that holds it.

use super::spec::FilterSpec;
use super::{Clause, Node};
pub use crate::filter::attr::attr_path;
use crate::filter::attr::AttrKey;
use crate::filter::cesql::Expression;
use crate::filter::data::DataClause;
use crate::filter::FilterError;

/// The top-level list: an implicit `all`.
pub(super) fn compile_list(filters: &[FilterSpec], path: &str) -> Result<Node, FilterError> {
    if filters.is_empty() {
        return Err(FilterError::new(path, "expected at least one filter"));
    }
    let mut nodes = compile_children(filters, path)?;
    Ok(if nodes.len() == 1 {
        nodes.remove(0)
    } else {
        Node::All(nodes.into_boxed_slice())
    })
}

fn compile_children(items: &[FilterSpec], path: &str) -> Result<Vec<Node>, FilterError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| compile_node(v, &format!("{path}[{i}]")))
        .collect()
}

/// One filter object: `{<dialect>: <argument>}`.
fn compile_node(node: &FilterSpec, path: &str) -> Result<Node, FilterError> {
    let path = format!("{path}.{}", node.dialect());
    let path = path.as_str();
    match node {
        FilterSpec::Exact(c) => clauses(c, path).map(Node::Exact),
        FilterSpec::Prefix(c) => clauses(c, path).map(Node::Prefix),
        FilterSpec::Suffix(c) => clauses(c, path).map(Node::Suffix),
        FilterSpec::All(c) => children(c, path).map(Node::All),
        FilterSpec::Any(c) => children(c, path).map(Node::Any),
        FilterSpec::Not(c) => compile_node(c, path).map(|n| Node::Not(Box::new(n))),
        FilterSpec::Cesql(src) => Expression::parse(src)
            .map(|e| Node::Cesql(Box::new(e)))
            .map_err(|e| FilterError::new(path, e.to_string())),
        FilterSpec::Data(entries) => {
            if entries.is_empty() {
                return Err(FilterError::new(
                    path,
                    "expected at least one data path: an empty map would match every event",
                ));
            }
            entries
                .iter()
                .map(|(p, tests)| DataClause::compile(p, tests, path))
                .collect::<Result<Vec<_>, _>>()
                .map(|c| Node::Data(c.into_boxed_slice()))
        }
    }
}

/// The argument of `exact`, `prefix` and `suffix`: a non-empty map of attribute
/// names to non-empty strings.
fn clauses(map: &[(String, String)], path: &str) -> Result<Box<[Clause]>, FilterError> {
    if map.is_empty() {
        return Err(FilterError::new(
            path,
            "expected at least one attribute: an empty map would match every event",
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        let at = attr_path(path, name);
        check_attribute_name(name).map_err(|m| FilterError::new(&at, m.to_string()))?;
        if value.is_empty() {
            return Err(FilterError::new(
                at,
                "the value must not be empty (Knative would ignore this filter and \
                 forward every event); to require the attribute, use cesql: \
                 \"EXISTS name\"",
            ));
        }
        out.push(Clause {
            key: AttrKey::new(name),
            value: value.as_str().into(),
        });
    }
    Ok(out.into_boxed_slice())
}

/// The argument of `all` and `any`: a non-empty list of filter objects.
fn children(items: &[FilterSpec], path: &str) -> Result<Box<[Node]>, FilterError> {
    if items.is_empty() {
        return Err(FilterError::new(
            path,
            "expected at least one filter (Knative would treat an empty list as \
             \"no filter\" and forward every event)",
        ));
    }
    compile_children(items, path).map(Vec::into_boxed_slice)
}

/// Why a name cannot be filtered on.
#[derive(Debug, thiserror::Error)]
enum AttributeNameError {
    #[error("the attribute name must not be empty")]
    Empty,
    #[error("\"data\" is not an attribute: event data cannot be filtered")]
    Data,
    #[error(
        "attribute name {0:?} is not a CloudEvents name: use lower-case letters a-z \
         and digits 0-9 only"
    )]
    NotCloudEvents(String),
}

/// CloudEvents naming rules: `[a-z0-9]+`, not `data`.
fn check_attribute_name(name: &str) -> Result<(), AttributeNameError> {
    if name.is_empty() {
        return Err(AttributeNameError::Empty);
    }
    if name == "data" {
        return Err(AttributeNameError::Data);
    }
    cemesh_proto::validate::check_name(name)
        .map_err(|_| AttributeNameError::NotCloudEvents(name.to_owned()))
}
