//! Scaling signals for real serverless platforms: per trigger lag, in-flight
//! deliveries, delivery rate and the age of the oldest waiting event, so KEDA (or the
//! HPA through Prometheus) can scale a subscriber on the work waiting for it — down to
//! zero, and back up the moment an event arrives. Three ways out, one source
//! ([`signals`]): Prometheus gauges (`/metrics`), the admin JSON endpoint for KEDA's
//! `metrics-api` scaler, and KEDA's external scaler gRPC service ([`scaler`]).

pub mod scaler;
pub mod signals;

pub use scaler::{service, Scaler};
pub use signals::{read, Signals};
