//! KEDA's external scaler service (`externalscaler.ExternalScaler`), per trigger.
//!
//! KEDA's `external-push` scaler keeps `StreamIsActive` open; the answer that matters
//! most is the flip from idle to active, because a subscriber scaled to zero cannot
//! start until KEDA hears it. Polling would cost a polling interval of latency, so
//! the stream listens to the trigger's broker as events are appended (the channel's
//! [`cemesh_channels::Tapped`] wrapper) and pushes `true` as soon as an appended
//! event passes the trigger's filter. Going idle is not urgent (KEDA waits a cooldown
//! anyway), so that is noticed by a once-a-second check.
//!
//! A `ScaledObject` names its trigger in `scalerMetadata` (see
//! `proto/proto/externalscaler.proto`); `GetMetrics` serves the same signals as the
//! admin `/scale` endpoint.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cemesh_channels::Tapped;
use cemesh_dispatcher::{TriggerContext, TriggerKey};
use cemesh_ingress::BrokerKey;
use cemesh_proto::pb::externalscaler::external_scaler_server::{
    ExternalScaler, ExternalScalerServer,
};
use cemesh_proto::pb::externalscaler::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::signals::{self, Signals};
use crate::mesh::{Registry, Taps};

/// How often an open `StreamIsActive` re-reads the signals (to notice going idle,
/// a trigger that reloaded, or one that appeared).
const RECHECK: Duration = Duration::from_secs(1);
/// Default `target` per replica.
const DEFAULT_TARGET: f64 = 10.0;

/// The service, ready to be added to a tonic router.
pub fn service(registry: Registry, taps: Taps) -> ExternalScalerServer<Scaler> {
    ExternalScalerServer::new(Scaler { registry, taps })
}

/// Answers KEDA from the running triggers.
#[derive(Clone)]
pub struct Scaler {
    registry: Registry,
    taps: Taps,
}

/// Which signal drives the HPA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Lag,
    InFlight,
    DeliveryRate,
    OldestWaitingAge,
}

impl Metric {
    fn parse(s: &str) -> Option<Metric> {
        match s {
            "lag" => Some(Metric::Lag),
            "inFlight" => Some(Metric::InFlight),
            "deliveryRate" => Some(Metric::DeliveryRate),
            "oldestWaitingAgeSeconds" => Some(Metric::OldestWaitingAge),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Metric::Lag => "lag",
            Metric::InFlight => "inFlight",
            Metric::DeliveryRate => "deliveryRate",
            Metric::OldestWaitingAge => "oldestWaitingAgeSeconds",
        }
    }

    fn value(self, s: &Signals) -> f64 {
        match self {
            Metric::Lag => s.lag as f64,
            Metric::InFlight => s.in_flight as f64,
            Metric::DeliveryRate => s.delivery_rate,
            Metric::OldestWaitingAge => s.oldest_waiting_age_seconds,
        }
    }
}

/// A `ScaledObjectRef`'s metadata, checked.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    trigger: TriggerKey,
    metric: Metric,
    target: f64,
}

impl Target {
    fn parse(r: &ScaledObjectRef) -> Result<Target, Status> {
        let meta = &r.scaler_metadata;
        let trigger = meta.get("trigger").map(|s| s.trim()).unwrap_or("");
        let trigger = match trigger.split_once('/') {
            _ if trigger.is_empty() => {
                return Err(Status::invalid_argument(
                    "scalerMetadata.trigger is required: \"namespace/name\" of a Trigger, or its name in the ScaledObject's namespace",
                ))
            }
            Some((ns, name)) => TriggerKey::new(ns, name),
            None if r.namespace.is_empty() => TriggerKey::new("default", trigger),
            None => TriggerKey::new(&r.namespace, trigger),
        };
        let metric = match meta.get("metric").map(|s| s.trim()) {
            None | Some("") => Metric::Lag,
            Some(m) => Metric::parse(m).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "scalerMetadata.metric {m:?} is not lag, inFlight, deliveryRate or oldestWaitingAgeSeconds"
                ))
            })?,
        };
        let target = match meta.get("target").map(|s| s.trim()) {
            None | Some("") => DEFAULT_TARGET,
            Some(t) => match t.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => v,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "scalerMetadata.target {t:?} is not a positive number"
                    )))
                }
            },
        };
        Ok(Target {
            trigger,
            metric,
            target,
        })
    }

    /// The HPA metric's name: unique per trigger and signal, and a valid Kubernetes
    /// metric name.
    fn metric_name(&self) -> String {
        format!(
            "cemesh-{}-{}-{}",
            self.trigger.namespace,
            self.trigger.name,
            self.metric.as_str().to_ascii_lowercase()
        )
    }
}

impl Scaler {
    fn context(&self, key: &TriggerKey) -> Option<Arc<TriggerContext>> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn tap(&self, ctx: &TriggerContext) -> Option<Arc<Tapped>> {
        let key = BrokerKey::new(&ctx.runtime.key.namespace, &ctx.runtime.broker);
        self.taps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    async fn signals(&self, key: &TriggerKey) -> Result<Signals, Status> {
        let ctx = self
            .context(key)
            .ok_or_else(|| Status::not_found(format!("trigger {key} is not running")))?;
        signals::read(&ctx)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let target = Target::parse(request.get_ref())?;
        let s = self.signals(&target.trigger).await?;
        Ok(Response::new(IsActiveResponse { result: s.active }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<ActiveStream>, Status> {
        let target = Target::parse(request.get_ref())?;
        // Fail the call at once for an unknown trigger; KEDA retries and logs it.
        self.signals(&target.trigger).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(push_active(self.clone(), target.trigger, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let target = Target::parse(request.get_ref())?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: target.metric_name(),
                target_size: target.target.ceil() as i64,
                target_size_float: target.target,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        let req = request.get_ref();
        let r = req
            .scaled_object_ref
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("scaledObjectRef is required"))?;
        let target = Target::parse(r)?;
        let s = self.signals(&target.trigger).await?;
        let value = target.metric.value(&s);
        let metric_name = if req.metric_name.is_empty() {
            target.metric_name()
        } else {
            req.metric_name.clone()
        };
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name,
                metric_value: value.round() as i64,
                metric_value_float: value,
            }],
        }))
    }
}

/// Feeds one `StreamIsActive` call until the client goes away: the current state,
/// then every change; idle to active as soon as a matching event is appended.
async fn push_active(
    scaler: Scaler,
    key: TriggerKey,
    tx: mpsc::Sender<Result<IsActiveResponse, Status>>,
) {
    let mut last: Option<bool> = None;
    // The broker's tap we listen to, and which one it is (a broker that restarts
    // gets a new one).
    let mut listening: Option<(Arc<Tapped>, broadcast::Receiver<Arc<cemesh_proto::Event>>)> = None;
    loop {
        let Some(ctx) = scaler.context(&key) else {
            let _ = tx
                .send(Err(Status::not_found(format!(
                    "trigger {key} is not running"
                ))))
                .await;
            return;
        };
        let tap = scaler.tap(&ctx);
        let same = match (&listening, &tap) {
            (Some((a, _)), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            // Listen before reading the state, so no append falls between the two.
            listening = tap.map(|t| {
                let rx = t.listen();
                (t, rx)
            });
        }
        let active = match signals::read(&ctx).await {
            Ok(s) => s.active,
            Err(e) => {
                tracing::debug!(trigger = %key, error = %e, "Scaler could not read the signals");
                last.unwrap_or(false)
            }
        };
        if last != Some(active) {
            last = Some(active);
            if tx
                .send(Ok(IsActiveResponse { result: active }))
                .await
                .is_err()
            {
                return;
            }
        }
        // Wait for the next check, a matching append, or the client leaving.
        let deadline = tokio::time::sleep(RECHECK);
        tokio::pin!(deadline);
        loop {
            let appended = async {
                match listening.as_mut() {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tx.closed() => return,
                _ = &mut deadline => break,
                r = appended => {
                    let matched = match r {
                        Ok(event) => ctx.runtime.filter.matches(&event),
                        // We fell behind: events came, some may match.
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => {
                            listening = None;
                            false
                        }
                    };
                    if matched && last != Some(true) {
                        last = Some(true);
                        if tx.send(Ok(IsActiveResponse { result: true })).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sref(ns: &str, meta: &[(&str, &str)]) -> ScaledObjectRef {
        ScaledObjectRef {
            name: "so".into(),
            namespace: ns.into(),
            scaler_metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
        }
    }

    #[test]
    fn metadata_names_the_trigger_metric_and_target() {
        let t = Target::parse(&sref("shop", &[("trigger", "orders")])).unwrap();
        assert_eq!(t.trigger, TriggerKey::new("shop", "orders"));
        assert_eq!((t.metric, t.target), (Metric::Lag, DEFAULT_TARGET));
        assert_eq!(t.metric_name(), "cemesh-shop-orders-lag");
        let t = Target::parse(&sref(
            "shop",
            &[
                ("trigger", "other/orders"),
                ("metric", "inFlight"),
                ("target", "2.5"),
            ],
        ))
        .unwrap();
        assert_eq!(t.trigger, TriggerKey::new("other", "orders"));
        assert_eq!((t.metric, t.target), (Metric::InFlight, 2.5));
    }

    #[test]
    fn bad_metadata_is_invalid_argument() {
        for meta in [
            vec![],
            vec![("trigger", "t"), ("metric", "cpu")],
            vec![("trigger", "t"), ("target", "0")],
            vec![("trigger", "t"), ("target", "lots")],
        ] {
            let err = Target::parse(&sref("ns", &meta)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{meta:?}");
        }
    }
}
