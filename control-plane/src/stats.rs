//! Live series for the dashboard (`GET /v1/stats`): every two seconds, each running
//! broker's events in per second (from its log's end) and each trigger's delivery
//! rate, failed attempts per second, p50/p99 attempt latency, lag and oldest waiting
//! age, from the mesh's own counters; the last five minutes are kept. No Prometheus
//! needed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cemesh_dispatcher::pipeline::LatencyHistogram;
use cemesh_dispatcher::TriggerKey;
use cemesh_ingress::BrokerKey;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::mesh::{Registry, Taps};

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept per series: five minutes.
const KEEP: usize = 150;

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSeries {
    pub namespace: String,
    pub name: String,
    pub t: VecDeque<i64>,
    pub in_rate: VecDeque<f64>,
    /// Events appended since the broker opened (its log's end).
    pub accepted: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSeries {
    pub namespace: String,
    pub name: String,
    pub broker: String,
    pub t: VecDeque<i64>,
    pub delivered_rate: VecDeque<f64>,
    pub error_rate: VecDeque<f64>,
    #[serde(rename = "p50Ms")]
    pub p50_ms: VecDeque<Option<f64>>,
    #[serde(rename = "p99Ms")]
    pub p99_ms: VecDeque<Option<f64>>,
    pub lag: VecDeque<u64>,
    pub oldest_age_seconds: VecDeque<f64>,
    pub delivered: u64,
    pub dead_lettered: u64,
}

/// What the last sample read, to difference the next one against.
struct Last {
    at: Instant,
    delivered: u64,
    failed: u64,
    latency: [u64; cemesh_dispatcher::pipeline::LATENCY_BUCKETS],
}

#[derive(Default)]
struct State {
    brokers: BTreeMap<BrokerKey, (BrokerSeries, Option<(Instant, u64)>)>,
    triggers: BTreeMap<TriggerKey, (TriggerSeries, Option<Last>)>,
}

/// The sampler's series, shared with the admin API.
#[derive(Clone, Default)]
pub struct Stats(Arc<Mutex<State>>);

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == KEEP {
        q.pop_front();
    }
    q.push_back(v);
}

impl Stats {
    /// Samples every [`INTERVAL`] until `stop`.
    pub fn spawn(registry: Registry, taps: Taps, stop: CancellationToken) -> Stats {
        let stats = Stats::default();
        let s = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(INTERVAL) => {}
                }
                s.sample(&registry, &taps).await;
            }
        });
        stats
    }

    async fn sample(&self, registry: &Registry, taps: &Taps) {
        let now = cemesh_proto::knative::now_ms();
        let channels: Vec<_> = taps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        let mut ends = Vec::new();
        for (k, c) in channels {
            use cemesh_channels::Channel;
            if let Ok(e) = c.ends().await {
                ends.push((k, e.iter().map(|p| p.offset).sum::<u64>()));
            }
        }
        let contexts: Vec<_> = registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, c)| (k.clone(), c.clone()))
            .collect();
        let mut signals = Vec::new();
        for (k, ctx) in contexts {
            let s = crate::keda::read(&ctx).await.ok();
            signals.push((k, ctx, s));
        }
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = Instant::now();
        st.brokers.retain(|k, _| ends.iter().any(|(e, _)| e == k));
        for (k, end) in ends {
            let (series, last) = st.brokers.entry(k.clone()).or_insert_with(|| {
                let series = BrokerSeries {
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    ..Default::default()
                };
                (series, None)
            });
            let rate = last.map_or(0.0, |(t, e)| {
                end.saturating_sub(e) as f64 / at.duration_since(t).as_secs_f64()
            });
            push(&mut series.t, now);
            push(&mut series.in_rate, rate);
            series.accepted = end;
            *last = Some((at, end));
        }
        st.triggers
            .retain(|k, _| signals.iter().any(|(s, ..)| s == k));
        for (k, ctx, s) in signals {
            let (series, last) = st.triggers.entry(k.clone()).or_insert_with(|| {
                let series = TriggerSeries {
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                    broker: ctx.runtime.broker.clone(),
                    ..Default::default()
                };
                (series, None)
            });
            let now_last = Last {
                at,
                delivered: ctx.stats.delivered.load(Relaxed),
                failed: ctx.stats.failed_attempts.load(Relaxed),
                latency: ctx.stats.latency.snapshot(),
            };
            let (rate, errors, p50, p99) = match last {
                Some(l) => {
                    let dt = at.duration_since(l.at).as_secs_f64().max(0.001);
                    (
                        now_last.delivered.saturating_sub(l.delivered) as f64 / dt,
                        now_last.failed.saturating_sub(l.failed) as f64 / dt,
                        LatencyHistogram::quantile(&l.latency, &now_last.latency, 0.5),
                        LatencyHistogram::quantile(&l.latency, &now_last.latency, 0.99),
                    )
                }
                None => (0.0, 0.0, None, None),
            };
            push(&mut series.t, now);
            push(&mut series.delivered_rate, rate);
            push(&mut series.error_rate, errors);
            push(&mut series.p50_ms, p50);
            push(&mut series.p99_ms, p99);
            push(&mut series.lag, s.as_ref().map_or(0, |s| s.lag));
            push(
                &mut series.oldest_age_seconds,
                s.as_ref().map_or(0.0, |s| s.oldest_waiting_age_seconds),
            );
            series.delivered = now_last.delivered;
            series.dead_lettered = ctx.stats.dead_lettered.load(Relaxed);
            *last = Some(now_last);
        }
    }

    /// The series as `GET /v1/stats` answers.
    pub fn json(&self) -> serde_json::Value {
        let st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "intervalSeconds": INTERVAL.as_secs(),
            "now": cemesh_proto::knative::now_ms(),
            "brokers": st.brokers.values().map(|(s, _)| s).collect::<Vec<_>>(),
            "triggers": st.triggers.values().map(|(s, _)| s).collect::<Vec<_>>(),
        })
    }
}
