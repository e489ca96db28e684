//! The soak's samples — the broker process's RSS, file descriptors, threads and CPU,
//! the machine's load, the data dir's size, the ingress rate, the p99 of the interval
//! per trigger role and the backlog — their table, and the verdict on whether the
//! resources stayed flat and the p99 stable.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::Role;

/// One row.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the first event was sent.
    pub t_s: f64,
    /// `start` (before the first event), `load`, `drain` (after the last) or `end`.
    pub phase: &'static str,
    pub rss_mib: f64,
    pub fds: u64,
    pub threads: u64,
    /// The broker's CPU over the interval, % of one core.
    pub cpu_pct: f64,
    /// The bench process's (generator and sink) CPU over the interval.
    pub bench_cpu_pct: f64,
    /// 1-minute load average of the machine.
    pub load1: f64,
    /// Size of the broker's data dir.
    pub data_mib: f64,
    /// Events accepted per second over the interval.
    pub accepted_per_s: f64,
    /// p99 of the interval's first deliveries, ms, per role (healthy, failing, slow);
    /// `None` when none arrived.
    pub p99_ms: [Option<f64>; 3],
    /// Accepted events not yet delivered or dead-lettered, per role.
    pub backlog: [u64; 3],
    /// Dead letters so far, all triggers.
    pub dead_letters: u64,
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.1}"))
}

/// The samples as a table.
pub fn table(samples: &[Sample]) -> String {
    let header = [
        "t s",
        "phase",
        "RSS MiB",
        "fds",
        "threads",
        "CPU %",
        "bench CPU %",
        "load1",
        "data MiB",
        "accepted/s",
        "p99 healthy ms",
        "p99 failing ms",
        "p99 slow ms",
        "backlog h/f/s",
        "dead letters",
    ];
    let rows: Vec<Vec<String>> = samples
        .iter()
        .map(|s| {
            vec![
                format!("{:.0}", s.t_s),
                s.phase.to_owned(),
                format!("{:.1}", s.rss_mib),
                s.fds.to_string(),
                s.threads.to_string(),
                format!("{:.0}", s.cpu_pct),
                format!("{:.0}", s.bench_cpu_pct),
                format!("{:.2}", s.load1),
                format!("{:.1}", s.data_mib),
                format!("{:.0}", s.accepted_per_s),
                cell(s.p99_ms[0]),
                cell(s.p99_ms[1]),
                cell(s.p99_ms[2]),
                format!("{}/{}/{}", s.backlog[0], s.backlog[1], s.backlog[2]),
                s.dead_letters.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(out, "{c:>w$}");
            } else if i == 1 {
                let _ = write!(out, "  {c:<w$}");
            } else {
                let _ = write!(out, "  {c:>w$}");
            }
        }
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// How one resource moved under load.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    pub name: &'static str,
    /// Before the first event.
    pub start: f64,
    /// First and last sample under load, and the highest.
    pub first: f64,
    pub last: f64,
    pub max: f64,
    /// After the drain.
    pub end: f64,
    /// Highest in the first and the second half of the load.
    pub first_half_max: f64,
    pub second_half_max: f64,
    /// Least-squares slope over the second half, per hour.
    pub slope_per_hour: f64,
    /// No new high in the second half beyond the tolerance; `None`: too few samples.
    pub flat: Option<bool>,
}

/// Least-squares slope of `(t, v)` points, per unit of `t`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - mv)).sum();
    let den: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// The trend of `value` over the samples. Flat: the second half of the load never
/// exceeds the first half's high by more than `rel` of it plus `abs` (a warm-up
/// that levels off is flat; a leak keeps making new highs).
pub fn trend(
    name: &'static str,
    samples: &[Sample],
    value: impl Fn(&Sample) -> f64,
    rel: f64,
    abs: f64,
) -> Trend {
    let load: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.phase == "load")
        .map(|s| (s.t_s, value(s)))
        .collect();
    let of = |phase: &str| samples.iter().find(|s| s.phase == phase).map(&value);
    let half = load.len() / 2;
    let max = |p: &[(f64, f64)]| p.iter().map(|p| p.1).fold(f64::NAN, f64::max);
    let (first_half, second_half) = load.split_at(half);
    let flat = (load.len() >= 4).then(|| max(second_half) <= max(first_half) * (1.0 + rel) + abs);
    Trend {
        name,
        start: of("start").unwrap_or(f64::NAN),
        first: load.first().map_or(f64::NAN, |p| p.1),
        last: load.last().map_or(f64::NAN, |p| p.1),
        max: max(&load),
        end: of("end").unwrap_or(f64::NAN),
        first_half_max: max(first_half),
        second_half_max: max(second_half),
        slope_per_hour: slope(second_half) * 3600.0,
        flat,
    }
}

/// How one role's interval p99 moved under load.
#[derive(Debug, Clone, Serialize)]
pub struct P99Trend {
    pub role: Role,
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    /// Median of the first and the second half of the intervals.
    pub first_half_median_ms: f64,
    pub second_half_median_ms: f64,
    /// The second half's median is at most 1.5 × the first's + 2 ms; `None`: too
    /// few intervals.
    pub stable: Option<bool>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn p99_trend(role: Role, samples: &[Sample]) -> P99Trend {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.phase == "load")
        .filter_map(|s| s.p99_ms[role as usize])
        .collect();
    let (a, b) = v.split_at(v.len() / 2);
    let (ma, mb) = (median(a), median(b));
    P99Trend {
        role,
        min_ms: v.iter().copied().fold(f64::NAN, f64::min),
        median_ms: median(&v),
        max_ms: v.iter().copied().fold(f64::NAN, f64::max),
        first_half_median_ms: ma,
        second_half_median_ms: mb,
        stable: (v.len() >= 4).then_some(mb <= ma * 1.5 + 2.0),
    }
}

/// Total size of the files under `dir`, MiB.
pub fn dir_mib(dir: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path()),
                Ok(_) => e.metadata().map_or(0, |m| m.len()),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

/// The machine's 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, phase: &'static str, rss: f64, p99: f64) -> Sample {
        Sample {
            t_s: t,
            phase,
            rss_mib: rss,
            fds: 10,
            threads: 5,
            cpu_pct: 0.0,
            bench_cpu_pct: 0.0,
            load1: 0.0,
            data_mib: 0.0,
            accepted_per_s: 0.0,
            p99_ms: [Some(p99), None, Some(p99 * 2.0)],
            backlog: [0; 3],
            dead_letters: 0,
        }
    }

    fn run(rss: &[f64], p99: &[f64]) -> Vec<Sample> {
        let mut v = vec![sample(0.0, "start", 10.0, 0.0)];
        v.extend(
            rss.iter()
                .zip(p99)
                .enumerate()
                .map(|(i, (&r, &p))| sample(60.0 * (i + 1) as f64, "load", r, p)),
        );
        v.push(sample(9999.0, "end", 11.0, 0.0));
        v
    }

    #[test]
    fn a_warm_up_that_levels_off_is_flat_and_a_leak_is_not() {
        let warm = run(&[20.0, 40.0, 41.0, 40.5, 41.0, 40.8], &[5.0; 6]);
        let t = trend("rss", &warm, |s| s.rss_mib, 0.1, 4.0);
        assert_eq!(t.flat, Some(true), "{t:?}");
        assert_eq!(
            (t.start, t.first, t.last, t.max, t.end),
            (10.0, 20.0, 40.8, 41.0, 11.0)
        );
        assert_eq!((t.first_half_max, t.second_half_max), (41.0, 41.0));

        let leak = run(&[20.0, 30.0, 40.0, 50.0, 60.0, 70.0], &[5.0; 6]);
        let t = trend("rss", &leak, |s| s.rss_mib, 0.1, 4.0);
        assert_eq!(t.flat, Some(false), "{t:?}");
        // 10 MiB a minute.
        assert!(
            (t.slope_per_hour - 600.0).abs() < 1e-6,
            "{}",
            t.slope_per_hour
        );

        let short = run(&[20.0, 30.0], &[5.0; 2]);
        assert_eq!(trend("rss", &short, |s| s.rss_mib, 0.1, 4.0).flat, None);
    }

    #[test]
    fn p99_stability_compares_the_halves() {
        let steady = run(&[1.0; 6], &[5.0, 6.0, 50.0, 5.5, 6.0, 5.0]);
        let t = p99_trend(Role::Healthy, &steady);
        assert_eq!(t.stable, Some(true), "{t:?}");
        assert_eq!((t.min_ms, t.max_ms), (5.0, 50.0));
        assert_eq!(p99_trend(Role::Slow, &steady).max_ms, 100.0);
        // No interval had a sample for the failing role.
        assert!(p99_trend(Role::Failing, &steady).median_ms.is_nan());

        let worse = run(&[1.0; 6], &[5.0, 5.0, 5.0, 20.0, 30.0, 40.0]);
        assert_eq!(p99_trend(Role::Healthy, &worse).stable, Some(false));
    }

    #[test]
    fn the_table_has_a_row_per_sample() {
        let t = table(&run(&[20.0], &[5.0]));
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(t.lines().next().is_some_and(|l| l.contains("p99 slow ms")));
        assert!(t.contains("  start "), "{t}");
    }

    #[test]
    fn dir_size_counts_nested_files() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("a")).expect("mkdir");
        std::fs::write(d.path().join("a/f"), vec![0u8; 1024 * 1024]).expect("write");
        std::fs::write(d.path().join("g"), vec![0u8; 512 * 1024]).expect("write");
        assert!((dir_mib(d.path()) - 1.5).abs() < 1e-9);
    }
}
