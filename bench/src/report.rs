//! What a bench prints: one table for people, the same numbers as JSON (`--json`)
//! for machines, and the exact counts that show nothing was lost or duplicated.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::generator::GenResult;
use crate::sink::RunTally;
use crate::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The embedded broker (`cemesh serve` as a child process).
    Broker,
    /// The bare forwarder.
    Baseline,
    /// A broker already running (`--target-url`).
    External,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Broker => "broker",
            TargetKind::Baseline => "baseline",
            TargetKind::External => "external",
        }
    }
}

pub fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// End-to-end latency of first deliveries, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One trigger's counts.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerCounts {
    pub trigger: usize,
    /// Accepted events this trigger matches.
    pub expected: u64,
    /// Distinct events delivered.
    pub delivered: u64,
    pub duplicates: u64,
    /// Expected but never delivered.
    pub lost: u64,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub target: TargetKind,
    pub round: u32,
    /// Requests sent to the ingress.
    pub sent: u64,
    /// Answered 2xx.
    pub accepted: u64,
    /// Other answers, by status code.
    pub rejected: BTreeMap<String, u64>,
    /// 429 answers (ingress backpressure) the generator waited on and retried.
    pub throttled: u64,
    /// Requests with no answer.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Accepted events × the triggers matching each.
    pub expected_deliveries: u64,
    /// Distinct (event, trigger) deliveries.
    pub delivered: u64,
    /// Deliveries of an event a trigger had already delivered.
    pub duplicates: u64,
    /// Expected deliveries that never came.
    pub lost: u64,
    /// Deliveries of events the ingress never acknowledged (its answer was lost).
    pub unacknowledged: u64,
    /// Deliveries that were not for this run.
    pub foreign: u64,
    /// Whether every expected delivery came before the drain timeout.
    pub drained: bool,
    pub per_trigger: Vec<TriggerCounts>,
    /// From the first send to the last answer.
    pub send_seconds: f64,
    /// From the first send to the last delivery.
    pub deliver_seconds: f64,
    /// Accepted events per second.
    pub ingress_events_per_s: f64,
    /// Distinct deliveries per second, all triggers together.
    pub delivered_events_per_s: f64,
    pub latency: Latency,
    /// CPU seconds of the system under test (its own process) during the run.
    pub target_cpu_seconds: Option<f64>,
    /// Peak RSS of the system under test, in MiB.
    pub target_peak_rss_mib: Option<f64>,
    /// CPU seconds of the bench process itself (generator and sink).
    pub bench_cpu_seconds: Option<f64>,
    #[serde(skip)]
    pub label: String,
}

pub struct RunInputs<'a> {
    pub kind: TargetKind,
    pub round: u32,
    pub plan: &'a Plan,
    pub gen: &'a GenResult,
    pub tally: &'a RunTally,
    /// Accepted events the triggers match.
    pub matching: u64,
    pub drained: bool,
    pub base: Instant,
    /// CPU seconds during the run and peak RSS (KiB) of the system under test.
    pub target_stats: Option<(f64, u64)>,
    pub bench_cpu: Option<f64>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

impl RunReport {
    pub fn build(i: RunInputs<'_>) -> RunReport {
        let ratio = i.plan.match_ratio;
        let accepted = &i.gen.accepted;
        let mut per_trigger = Vec::with_capacity(i.tally.triggers.len());
        let mut unacknowledged = 0;
        for (n, t) in i.tally.triggers.iter().enumerate() {
            let seen = t.seen();
            let lost = accepted
                .iter()
                .filter(|&s| super::event_matches(s, ratio) && !seen.contains(s))
                .count() as u64;
            unacknowledged += seen.iter().filter(|&s| !accepted.contains(s)).count() as u64;
            per_trigger.push(TriggerCounts {
                trigger: n,
                expected: i.matching,
                delivered: seen.len(),
                duplicates: t.duplicates.load(Ordering::Relaxed),
                lost,
            });
        }
        let delivered: u64 = per_trigger.iter().map(|t| t.delivered).sum();
        let start_ns = i.gen.start.saturating_duration_since(i.base).as_nanos() as u64;
        let last_ns = i.tally.last_delivery_ns.load(Ordering::Relaxed);
        let deliver_seconds = last_ns.saturating_sub(start_ns) as f64 / 1e9;
        let send_seconds = i.gen.elapsed.as_secs_f64();
        let h = &i.tally.latency;
        RunReport {
            target: i.kind,
            round: i.round,
            sent: i.gen.sent,
            accepted: accepted.len(),
            rejected: i
                .gen
                .rejected
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            throttled: i.gen.throttled,
            errors: i.gen.errors,
            first_error: i.gen.first_error.clone(),
            expected_deliveries: i.matching * i.tally.triggers.len() as u64,
            delivered,
            duplicates: per_trigger.iter().map(|t| t.duplicates).sum(),
            lost: per_trigger.iter().map(|t| t.lost).sum(),
            unacknowledged,
            foreign: i.tally.foreign.load(Ordering::Relaxed),
            drained: i.drained,
            per_trigger,
            send_seconds,
            deliver_seconds,
            ingress_events_per_s: per_s(accepted.len(), send_seconds),
            delivered_events_per_s: per_s(delivered, deliver_seconds),
            latency: Latency {
                samples: h.count(),
                p50_ms: ms(h.quantile(0.50)),
                p90_ms: ms(h.quantile(0.90)),
                p99_ms: ms(h.quantile(0.99)),
                max_ms: ms(h.max()),
            },
            target_cpu_seconds: i.target_stats.map(|s| s.0),
            target_peak_rss_mib: i.target_stats.map(|s| s.1 as f64 / 1024.0),
            bench_cpu_seconds: i.bench_cpu,
            label: format!("{} #{}", i.kind.as_str(), i.round),
        }
    }

    /// The counts that prove the run lost and duplicated nothing, in one line.
    pub fn counts_line(&self) -> String {
        let mut s = format!(
            "{}: sent {}, accepted {}, delivered {}/{} to {} trigger{}, duplicates {}, lost {}",
            self.label,
            self.sent,
            self.accepted,
            self.delivered,
            self.expected_deliveries,
            self.per_trigger.len(),
            if self.per_trigger.len() == 1 { "" } else { "s" },
            self.duplicates,
            self.lost,
        );
        if !self.rejected.is_empty() {
            let r: Vec<String> = self
                .rejected
                .iter()
                .map(|(k, v)| format!("{v}×{k}"))
                .collect();
            let _ = write!(s, ", rejected {}", r.join(" "));
        }
        if self.throttled > 0 {
            let _ = write!(s, ", held back {} times (429, retried)", self.throttled);
        }
        if self.errors > 0 {
            let _ = write!(s, ", {} errors", self.errors);
            if let Some(e) = &self.first_error {
                let _ = write!(s, " (first: {e})");
            }
        }
        if self.unacknowledged > 0 {
            let _ = write!(s, ", {} delivered unacknowledged", self.unacknowledged);
        }
        if self.foreign > 0 {
            let _ = write!(s, ", {} foreign deliveries", self.foreign);
        }
        if !self.drained {
            s.push_str(" — drain timed out");
        }
        s
    }

    /// The rate the summary compares: deliveries, or accepted events when no trigger.
    fn rate(&self) -> f64 {
        if self.per_trigger.is_empty() {
            self.ingress_events_per_s
        } else {
            self.delivered_events_per_s
        }
    }
}

/// The median run of each kind and how the broker compares to the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Round of the median broker (or external) run.
    pub broker_round: Option<u32>,
    /// Round of the median baseline run.
    pub baseline_round: Option<u32>,
    /// Broker ÷ baseline, delivered events per second (ingress when no trigger).
    pub ratio_to_baseline: Option<f64>,
    /// Broker ÷ baseline, ingress events per second.
    pub ingress_ratio_to_baseline: Option<f64>,
    /// True when any run lost or duplicated a delivery or timed out draining.
    pub anomalies: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub plan: Plan,
    pub runs: Vec<RunReport>,
    pub summary: Summary,
}

fn median<'a>(runs: impl Iterator<Item = &'a RunReport>) -> Option<&'a RunReport> {
    let mut v: Vec<&RunReport> = runs.collect();
    v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    v.get(v.len().checked_sub(1)? / 2).copied()
}

impl Report {
    pub fn new(plan: Plan, runs: Vec<RunReport>) -> Report {
        let broker = median(runs.iter().filter(|r| r.target != TargetKind::Baseline));
        let baseline = median(runs.iter().filter(|r| r.target == TargetKind::Baseline));
        let ratio = |f: fn(&RunReport) -> f64| match (broker, baseline) {
            (Some(a), Some(b)) if f(b) > 0.0 => Some(f(a) / f(b)),
            _ => None,
        };
        let summary = Summary {
            broker_round: broker.map(|r| r.round),
            baseline_round: baseline.map(|r| r.round),
            ratio_to_baseline: ratio(RunReport::rate),
            ingress_ratio_to_baseline: ratio(|r| r.ingress_events_per_s),
            anomalies: runs
                .iter()
                .any(|r| r.lost > 0 || r.duplicates > 0 || !r.drained),
        };
        Report {
            plan,
            runs,
            summary,
        }
    }

    /// The table for people.
    pub fn table(&self) -> String {
        let p = &self.plan;
        let mut out = String::new();
        let target = match &p.target_url {
            Some(url) => format!("external broker {url}"),
            None => {
                let mut s = format!("{} channel", p.channel);
                if let Some(d) = &p.durability {
                    let _ = write!(s, " ({d})");
                }
                s
            }
        };
        let _ = writeln!(
            out,
            "cemesh bench: {target}, {} trigger{} (filter {}, match ratio {}), {} B events, {} connections, {}",
            p.triggers,
            if p.triggers == 1 { "" } else { "s" },
            p.filter.as_str(),
            p.match_ratio,
            p.size_bytes,
            p.connections,
            match p.rate {
                Some(r) => format!("fixed rate {r} events/s"),
                None => "as fast as possible".to_owned(),
            },
        );
        let header = [
            "run",
            "ingress ev/s",
            "delivered ev/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "CPU s",
            "peak RSS MiB",
            "vs baseline",
        ];
        let mut rows: Vec<[String; 10]> = Vec::new();
        let baseline = self
            .summary
            .baseline_round
            .and_then(|round| {
                self.runs
                    .iter()
                    .find(|r| r.target == TargetKind::Baseline && r.round == round)
            })
            .map(RunReport::rate);
        for r in &self.runs {
            let vs = match (r.target, baseline) {
                (TargetKind::Baseline, _) | (_, None) => "-".to_owned(),
                (_, Some(b)) if b > 0.0 => format!("{:.2}", r.rate() / b),
                _ => "-".to_owned(),
            };
            rows.push([
                r.label.clone(),
                format!("{:.0}", r.ingress_events_per_s),
                format!("{:.0}", r.delivered_events_per_s),
                format!("{:.2}", r.latency.p50_ms),
                format!("{:.2}", r.latency.p90_ms),
                format!("{:.2}", r.latency.p99_ms),
                format!("{:.2}", r.latency.max_ms),
                r.target_cpu_seconds
                    .map_or("-".to_owned(), |c| format!("{c:.2}")),
                r.target_peak_rss_mib
                    .map_or("-".to_owned(), |m| format!("{m:.1}")),
                vs,
            ]);
        }
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[&str]| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i == 0 {
                    let _ = write!(l, "{cell:<w$}");
                } else {
                    let _ = write!(l, "  {cell:>w$}");
                }
            }
            l.push('\n');
            l
        };
        out.push_str(&line(&header));
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            out.push_str(&line(&cells));
        }
        if let Some(ratio) = self.summary.ratio_to_baseline {
            let _ = writeln!(
                out,
                "median broker / median baseline: {ratio:.2} of delivered events/s"
            );
        }
        for r in &self.runs {
            let _ = writeln!(out, "{}", r.counts_line());
        }
        let bench_cpu: Vec<String> = self
            .runs
            .iter()
            .filter_map(|r| Some(format!("{} {:.2}", r.label, r.bench_cpu_seconds?)))
            .collect();
        let _ = writeln!(
            out,
            "delivered ev/s counts every (event, trigger) delivery. CPU s and peak RSS are the \
             system under test's own process; the generator and sink ran in this process \
             (CPU s: {}).",
            bench_cpu.join(", ")
        );
        if self.summary.anomalies {
            let _ = writeln!(
                out,
                "WARNING: some run lost, duplicated or did not drain deliveries (see above)"
            );
        }
        out
    }
}
