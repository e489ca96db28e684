//! The dispatcher: one independent delivery loop per trigger. Each loop reads its own
//! subscription of the broker's channel, evaluates the trigger's compiled filter, acks
//! non-matching events at once and hands matching ones to the delivery policy.
//!
//! The control plane resolves every reference before anything here runs: a trigger
//! arrives with its subscriber URL and a compiled filter, never a manifest.

pub mod breaker;
mod client;
pub mod delivery;
pub mod endpoint;
pub mod filter;
pub mod pause;
pub mod pipeline;
pub mod replay;
pub mod retry;
pub mod runtime;
pub mod signing;
pub mod trigger;

pub use breaker::{Breaker, BreakerSpec, BreakerView};
pub use client::{Answer, PlainPoster};
pub use delivery::{BackoffPolicy, Deliverer, DeliverySpec, Format, Ordering};
pub use endpoint::{Endpoints, Lease, LeaseError};
pub use filter::{Filter, FilterError};
pub use pause::{Pause, PauseView};
pub use pipeline::{DeadLettered, Processed, TriggerContext, TriggerMetrics, TriggerStats};
pub use retry::{GiveUp, RetryAction, RetryState};
pub use runtime::{MaxLag, ReplyTo, TriggerKey, TriggerRuntime};
pub use signing::{CaCerts, DeliveryAuth, TokenSource, WebhookSecret};
pub use trigger::{spawn_trigger, TriggerHandle};
