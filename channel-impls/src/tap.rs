//! A channel wrapper that copies every appended event to live listeners (`cemesh
//! tail`). Listeners get a bounded broadcast: one that falls behind loses events
//! (and is told how many), the channel never waits for it. With no listener the
//! wrapper costs one atomic load per append.

use std::sync::Arc;

use async_trait::async_trait;
use cemesh_proto::Event;
use tokio::sync::broadcast;

use crate::{Channel, ChannelError, Position, StartAt, Subscription};

/// Events buffered per listener before it starts losing them.
pub const TAP_CAPACITY: usize = 1024;

#[derive(Debug)]
pub struct Tapped {
    inner: Arc<dyn Channel>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Tapped {
    pub fn new(inner: Arc<dyn Channel>) -> Self {
        Tapped {
            inner,
            tx: broadcast::Sender::new(TAP_CAPACITY),
        }
    }

    /// A new listener, seeing events appended from now on.
    pub fn listen(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

#[async_trait]
impl Channel for Tapped {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn backpressure(&self) -> Result<(), ChannelError> {
        self.inner.backpressure()
    }

    async fn room(&self) -> Result<(), ChannelError> {
        self.inner.room().await
    }

    async fn append(&self, events: Vec<Event>) -> Result<(), ChannelError> {
        if self.tx.receiver_count() == 0 {
            return self.inner.append(events).await;
        }
        let copies: Vec<Arc<Event>> = events.iter().cloned().map(Arc::new).collect();
        self.inner.append(events).await?;
        for e in copies {
            let _ = self.tx.send(e);
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        name: &str,
        start: StartAt,
    ) -> Result<Arc<dyn Subscription>, ChannelError> {
        self.inner.subscribe(name, start).await
    }

    async fn unsubscribe(&self, name: &str) -> Result<(), ChannelError> {
        self.inner.unsubscribe(name).await
    }

    async fn lag(&self, name: &str) -> Result<u64, ChannelError> {
        self.inner.lag(name).await
    }

    async fn ends(&self) -> Result<Vec<Position>, ChannelError> {
        self.inner.ends().await
    }

    async fn offsets_at(&self, at: StartAt) -> Result<Vec<Position>, ChannelError> {
        self.inner.offsets_at(at).await
    }

    async fn seek(&self, name: &str, to: &[Position]) -> Result<(), ChannelError> {
        self.inner.seek(name, to).await
    }

    async fn committed(&self, name: &str) -> Result<Vec<Position>, ChannelError> {
        self.inner.committed(name).await
    }
}
