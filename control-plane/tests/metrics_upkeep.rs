//! A broker nobody scrapes keeps bounded memory for its histograms: the exporter
//! holds each recorded sample until upkeep folds it into the buckets, and the
//! recorder `metrics::install` sets up runs upkeep itself (issue 17's soak grew by
//! every sample recorded, ~4 MiB a minute, because nothing did).
//!
//! A counting global allocator sees every allocation of the process, so this file
//! holds a single test.

use std::alloc::System;
use std::time::{Duration, Instant};

use cemesh_control::metrics;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn live_bytes(region: &Region<'_, System>) -> i64 {
    let c = region.change();
    c.bytes_allocated as i64 - c.bytes_deallocated as i64 + c.bytes_reallocated as i64
}

#[test]
fn unscraped_histogram_samples_do_not_accumulate() {
    metrics::install();
    let h = ::metrics::histogram!("cemesh_test_upkeep_duration_seconds", "trigger_name" => "t");
    h.record(0.001);
    let region = Region::new(GLOBAL);
    // Two million samples: 16 MB if they were all kept.
    for i in 0..2_000_000u32 {
        h.record(f64::from(i % 1000) / 1e6);
    }
    let after_recording = live_bytes(&region);
    assert!(
        after_recording > 8_000_000,
        "the samples should be pending before upkeep ({after_recording} bytes): the test measures nothing otherwise"
    );
    // Upkeep runs every few seconds; the drained blocks are freed once no reader
    // holds them (epoch-based: later recordings let the collector run), so the
    // recording goes on at a trickle, as a broker's would.
    let deadline = Instant::now() + metrics::UPKEEP_EVERY * 3;
    loop {
        for _ in 0..2_000 {
            h.record(0.001);
        }
        let live = live_bytes(&region);
        if live < 1_000_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{live} bytes still held {:?} after recording 2M samples: nothing drains unscraped histograms",
            metrics::UPKEEP_EVERY * 3
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The samples were counted, not lost.
    let text = metrics::render_recorded();
    let count_line = text
        .lines()
        .find(|l| l.starts_with("cemesh_test_upkeep_duration_seconds_count"))
        .unwrap_or_else(|| panic!("no count in\n{text}"));
    let count: f64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2_002_001.0, "{count_line}");
}
