//! `cemesh.v1.Publisher`: the three publishing calls over the ingress's broker table.
//!
//! Every event goes through what the HTTP ingress does, in the same order: find the
//! broker, check the size against its limit (the encoded `CloudEvent`, as HTTP checks
//! the body), check the sender (the `authorization` metadata, once per call or per
//! broker of a stream) and its policies, convert and validate, stamp the arrival
//! time and TTL, append, answer once the channel says the events are durable.

use std::pin::Pin;
use std::sync::Arc;

use crate::accept::{self, check_size, invalid};
use crate::auth::Admitted;
use crate::{BrokerEndpoint, BrokerKey, IngressError, Routes};
use bytes::Bytes;
use cemesh_proto::pb::cemesh::v1::publisher_server::Publisher;
use cemesh_proto::pb::cemesh::v1::{
    PublishAck, PublishBatchRequest, PublishRequest, PublishResponse,
};
use cemesh_proto::pb::cloudevents::CloudEvent;
use cemesh_proto::{knative, Event, EventError};
use futures::{FutureExt as _, Stream, StreamExt as _};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::status as error;

/// Events of a stream gathered into one append at most (those already received
/// while the previous append was in flight).
const STREAM_BATCH: usize = 256;
/// Acks buffered towards a slow reader before the stream stops reading events.
const ACK_BUFFER: usize = 1024;

/// The service; cheap to clone (the route table is shared).
#[derive(Debug, Clone)]
pub struct PublisherService {
    routes: Routes,
}

impl PublisherService {
    pub fn new(routes: Routes) -> Self {
        PublisherService { routes }
    }
}

fn broker(
    routes: &Routes,
    namespace: &str,
    name: &str,
) -> Result<Arc<BrokerEndpoint>, IngressError> {
    accept::broker(routes, &BrokerKey::new(namespace, name))
}

/// The `authorization` metadata of a call.
fn credential<T>(request: &Request<T>) -> Option<Vec<u8>> {
    request
        .metadata()
        .get("authorization")
        .map(|v| v.as_bytes().to_vec())
}

/// Converts, validates, checks against the sender's policies and stamps one event.
fn accept(
    routes: &Routes,
    msg: Option<CloudEvent>,
    broker: &BrokerEndpoint,
    admitted: &Admitted,
    now: &str,
) -> Result<Event, IngressError> {
    let msg = msg.ok_or_else(|| invalid(EventError::msg("the request carries no event")))?;
    check_size(broker, msg.encoded_len())?;
    let mut event = cemesh_proto::protobuf::from_proto(msg).map_err(invalid)?;
    own_data(&mut event);
    cemesh_proto::validate::validate(&event).map_err(invalid)?;
    let mut events = [event];
    accept::check_policies(routes, broker, admitted, &mut events, false)?;
    accept::stamp(broker, &mut events, now, None, false)?;
    accept::check_deliverable(broker, routes.header_budget(), &events, false)?;
    let [event] = events;
    Ok(event)
}

/// Copies an event's data out of the request's buffer. tonic decodes `bytes` fields
/// as slices of the call's read buffer (8 KiB or more), which a stored event would
/// otherwise keep whole for as long as it waits (as `accept::read_body` does for
/// HTTP bodies).
fn own_data(event: &mut Event) {
    if let Some(data) = &event.data {
        event.data = Some(Bytes::copy_from_slice(data));
    }
}

fn refuse(err: IngressError) -> Status {
    tracing::debug!(error = %err, "Refused");
    error::status(&err)
}

type AckStream = Pin<Box<dyn Stream<Item = Result<PublishAck, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let credential = credential(&request);
        let req = request.into_inner();
        let broker = broker(&self.routes, &req.namespace, &req.broker).map_err(refuse)?;
        let admitted =
            accept::admit(&self.routes, &broker, credential.as_deref()).map_err(refuse)?;
        let now = knative::now_rfc3339();
        let event = accept(&self.routes, req.event, &broker, &admitted, &now).map_err(refuse)?;
        accept::room(&broker).await.map_err(refuse)?;
        accept::store(&broker, vec![event], "grpc")
            .await
            .map_err(refuse)?;
        Ok(Response::new(PublishResponse { accepted: 1 }))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let credential = credential(&request);
        let req = request.into_inner();
        let broker = broker(&self.routes, &req.namespace, &req.broker).map_err(refuse)?;
        let admitted =
            accept::admit(&self.routes, &broker, credential.as_deref()).map_err(refuse)?;
        let messages = req.batch.map(|b| b.events).unwrap_or_default();
        let size: usize = messages
            .iter()
            .map(|m| prost::encoding::message::encoded_len(1, m))
            .sum();
        check_size(&broker, size).map_err(refuse)?;
        let mut events =
            cemesh_proto::protobuf::from_proto_batch(messages).map_err(|e| refuse(invalid(e)))?;
        events.iter_mut().for_each(own_data);
        accept::check_policies(&self.routes, &broker, &admitted, &mut events, true)
            .map_err(refuse)?;
        accept::stamp(&broker, &mut events, &knative::now_rfc3339(), None, true).map_err(refuse)?;
        accept::check_deliverable(&broker, self.routes.header_budget(), &events, true)
            .map_err(refuse)?;
        accept::room(&broker).await.map_err(refuse)?;
        let accepted = accept::store(&broker, events, "grpc-batch")
            .await
            .map_err(refuse)?;
        let accepted = u32::try_from(accepted).unwrap_or(u32::MAX);
        Ok(Response::new(PublishResponse { accepted }))
    }

    type PublishStreamStream = AckStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let credential = credential(&request);
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        tokio::spawn(run_stream(self.routes.clone(), credential, inbound, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One received event of a stream, ready to append or already refused.
struct Pending {
    sequence: u64,
    id: String,
    outcome: Result<(Arc<BrokerEndpoint>, Event), IngressError>,
}

/// Reads a stream: waits for an event, takes every further one already received (up
/// to [`STREAM_BATCH`]), appends them (one append per run of events for the same
/// broker), then acks each in order. While one append is in flight, the next events
/// queue up, so a fast producer gets group commits without giving up per-event acks.
async fn run_stream(
    routes: Routes,
    credential: Option<Vec<u8>>,
    mut inbound: Streaming<PublishRequest>,
    tx: mpsc::Sender<Result<PublishAck, Status>>,
) {
    let mut sequence = 0u64;
    let mut current = Current {
        credential,
        broker: None,
    };
    loop {
        let first = match inbound.next().await {
            None => return,
            Some(Err(status)) => {
                tracing::debug!(%status, "Publish stream ended by the client");
                return;
            }
            Some(Ok(req)) => req,
        };
        let mut received = vec![first];
        let mut ended = false;
        while received.len() < STREAM_BATCH {
            match inbound.next().now_or_never() {
                Some(Some(Ok(req))) => received.push(req),
                Some(None) | Some(Some(Err(_))) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let now = knative::now_rfc3339();
        let pending: Vec<Pending> = received
            .into_iter()
            .map(|req| {
                let p = prepare(&routes, &mut current, req, sequence, &now);
                sequence += 1;
                p
            })
            .collect();
        if !flush(pending, &tx).await || ended {
            return;
        }
    }
}

/// A stream's sender and the broker it sends to, admitted once per broker, and
/// again once its JWT has expired (refused then, as a new call would be).
struct Current {
    credential: Option<Vec<u8>>,
    broker: Option<(Arc<BrokerEndpoint>, Admitted)>,
}

fn prepare(
    routes: &Routes,
    current: &mut Current,
    req: PublishRequest,
    sequence: u64,
    now: &str,
) -> Pending {
    let id = req.event.as_ref().map(|e| e.id.clone()).unwrap_or_default();
    let endpoint = if req.namespace.is_empty() && req.broker.is_empty() {
        current.broker.clone().ok_or_else(|| {
            invalid(EventError::msg(
                "the first message of a stream must name the broker (namespace and broker)",
            ))
        })
    } else {
        broker(routes, &req.namespace, &req.broker).and_then(|b| match &current.broker {
            Some((running, admitted))
                if Arc::ptr_eq(running, &b)
                    && !admitted.who.as_ref().is_some_and(|w| w.expired()) =>
            {
                Ok((b, admitted.clone()))
            }
            _ => {
                let admitted = accept::admit(routes, &b, current.credential.as_deref())?;
                current.broker = Some((b.clone(), admitted.clone()));
                Ok((b, admitted))
            }
        })
    };
    let outcome = endpoint.and_then(|(b, admitted)| {
        let event = accept(routes, req.event, &b, &admitted, now)?;
        Ok((b, event))
    });
    Pending {
        sequence,
        id,
        outcome,
    }
}

/// Appends the accepted events run by run and sends every ack in order; false once
/// the client has gone.
async fn flush(pending: Vec<Pending>, tx: &mpsc::Sender<Result<PublishAck, Status>>) -> bool {
    let mut acks = Vec::with_capacity(pending.len());
    let mut run: Vec<(u64, String)> = Vec::new();
    let mut run_events: Vec<Event> = Vec::new();
    let mut run_broker: Option<Arc<BrokerEndpoint>> = None;
    for p in pending {
        match p.outcome {
            Ok((b, event)) => {
                if run_broker.as_ref().is_some_and(|rb| !Arc::ptr_eq(rb, &b)) {
                    append_run(&mut run_broker, &mut run, &mut run_events, &mut acks).await;
                }
                run_broker = Some(b);
                run.push((p.sequence, p.id));
                run_events.push(event);
            }
            Err(err) => {
                append_run(&mut run_broker, &mut run, &mut run_events, &mut acks).await;
                tracing::debug!(error = %err, sequence = p.sequence, "Refused");
                acks.push(error::refused_ack(p.sequence, p.id, &err));
            }
        }
    }
    append_run(&mut run_broker, &mut run, &mut run_events, &mut acks).await;
    for ack in acks {
        if tx.send(Ok(ack)).await.is_err() {
            return false;
        }
    }
    true
}

async fn append_run(
    broker: &mut Option<Arc<BrokerEndpoint>>,
    run: &mut Vec<(u64, String)>,
    events: &mut Vec<Event>,
    acks: &mut Vec<PublishAck>,
) {
    let Some(b) = broker.take() else { return };
    let result = match accept::room(&b).await {
        Ok(()) => accept::store(&b, std::mem::take(events), "grpc-stream").await,
        Err(e) => {
            events.clear();
            Err(e)
        }
    };
    for (sequence, id) in run.drain(..) {
        acks.push(match &result {
            Ok(_) => PublishAck {
                sequence,
                id,
                ..PublishAck::default()
            },
            Err(e) => error::refused_ack(sequence, id, e),
        });
    }
}
