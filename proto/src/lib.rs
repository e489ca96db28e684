//! cemesh's own CloudEvents model and its codecs.
//!
//! This crate sits at the bottom of the workspace: the channels store [`Event`]s, the
//! ingress decodes them from HTTP, the dispatcher encodes them for subscribers. We own
//! the type instead of using `cloudevents::Event` because a broker must forward every
//! attribute exactly as sent (timestamps keep their offset, extensions keep their type),
//! keep data as bytes without copies, and validate per the spec on the way in.

pub mod codec;
pub mod event;
pub mod http;
pub mod json;
pub mod knative;
pub mod metric_names;
pub mod pb;
pub mod protobuf;
#[cfg(feature = "sdk")]
pub mod sdk;
pub mod trace;
pub mod validate;

pub use event::{AttrRef, AttributeValue, Event, SpecVersion};
/// Re-exported so users of [`pb`] encode and decode with the same `prost`.
pub use prost;
pub use validate::EventError;
