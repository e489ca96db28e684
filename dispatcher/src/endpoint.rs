//! Subscribers that are not a fixed URL: a pool of instances that may be scaled to
//! zero and started on demand (the broker's local scale-on-demand services). Each
//! attempt leases one ready instance; dropping the lease tells the pool the attempt
//! ended, so it can balance load and scale on in-flight counts.

use std::fmt;

use async_trait::async_trait;

/// One attempt's hold on an instance.
pub struct Lease {
    /// The instance's base URL (scheme, host and port; the trigger's path is kept).
    pub base: reqwest::Url,
    _release: Box<dyn Send + Sync>,
}

impl Lease {
    /// A lease whose `release` value is dropped when the attempt ends.
    pub fn new(base: reqwest::Url, release: impl Send + Sync + 'static) -> Self {
        Lease {
            base,
            _release: Box::new(release),
        }
    }

    /// `url` pointed at this instance.
    pub fn target(&self, url: &reqwest::Url) -> reqwest::Url {
        let mut u = url.clone();
        let _ = u.set_scheme(self.base.scheme());
        let _ = u.set_host(self.base.host_str());
        let _ = u.set_port(self.base.port_or_known_default());
        u
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("base", &self.base.as_str())
            .finish()
    }
}

/// Why no instance could be leased; the attempt fails without a response (and is
/// retried like a refused connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    #[error("service {service} is shutting down")]
    ShuttingDown { service: String },
    #[error("no instance of service {service} was ready within {waited:?}")]
    NotReady {
        service: String,
        waited: std::time::Duration,
    },
}

/// A pool of subscriber instances.
#[async_trait]
pub trait Endpoints: Send + Sync + fmt::Debug + 'static {
    /// Waits for a ready instance (starting one when none runs) and leases it for one
    /// attempt.
    async fn acquire(&self) -> Result<Lease, LeaseError>;
}
