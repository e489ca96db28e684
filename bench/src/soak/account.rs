//! The soak's accounting: for every trigger, each accepted event must have been
//! delivered or dead-lettered — one of the two, once — and the broker's own counters
//! (delivered, retries, dead letters, lag, in flight) must agree with what the sink
//! received.

use serde::Serialize;

use super::Role;
use crate::bitset::Bitset;

/// How many example sequence numbers a mismatch names.
const EXAMPLES: usize = 5;

/// The broker's counters of one trigger (`status.stats` of the admin API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BrokerCounts {
    pub delivered: u64,
    pub retries: u64,
    pub dead_lettered: u64,
    /// Dead letters in the built-in store (the dead-letter sink failed too).
    pub dead_letters_stored: u64,
    pub lag: u64,
    pub in_flight: u64,
}

impl BrokerCounts {
    /// From the trigger's `status.stats` JSON.
    pub fn from_stats(stats: &serde_json::Value) -> Option<BrokerCounts> {
        let n = |k: &str| stats[k].as_u64();
        Some(BrokerCounts {
            delivered: n("delivered")?,
            retries: n("retries")?,
            dead_lettered: n("deadLettered")?,
            dead_letters_stored: n("deadLettersStored").unwrap_or(0),
            lag: n("lag").unwrap_or(0),
            in_flight: n("inFlight").unwrap_or(0),
        })
    }
}

/// What the sink received for one trigger, and what was accepted.
pub struct Received<'a> {
    pub accepted: &'a Bitset,
    pub delivered: &'a Bitset,
    pub dead: &'a Bitset,
    /// 2xx answers and dead-letter requests, duplicates included.
    pub deliveries: u64,
    pub dead_letters: u64,
    /// Attempts after the first, as the sink counted them.
    pub retries: u64,
}

/// One trigger's balance.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerAccount {
    pub trigger: usize,
    pub role: Role,
    pub accepted: u64,
    /// Distinct events the subscriber took.
    pub delivered: u64,
    /// Distinct events the dead-letter sink took.
    pub dead_lettered: u64,
    /// Accepted events neither delivered nor dead-lettered.
    pub lost: u64,
    /// Events both delivered and dead-lettered.
    pub both: u64,
    /// Delivered or dead-lettered events the ingress never acknowledged.
    pub unacknowledged: u64,
    pub duplicate_deliveries: u64,
    pub duplicate_dead_letters: u64,
    /// Accepted events whose every attempt the subscriber refused by design.
    pub expected_dead_letters: u64,
    /// Dead letters that were not expected, and expected ones that did not come.
    pub unexpected_dead_letters: u64,
    pub missing_dead_letters: u64,
    pub sink_retries: u64,
    pub broker: Option<BrokerCounts>,
    /// Every disagreement, in words; empty when the trigger balances.
    pub problems: Vec<String>,
}

impl TriggerAccount {
    /// True when events were lost (the soak fails).
    pub fn lost_events(&self) -> bool {
        self.lost > 0
    }
}

fn examples(it: impl Iterator<Item = u64>) -> String {
    let v: Vec<String> = it.take(EXAMPLES).map(|s| s.to_string()).collect();
    v.join(", ")
}

/// Balances one trigger. `expect_dead` says which events must end in the dead
/// letters (every attempt refused).
pub fn account(
    trigger: usize,
    role: Role,
    r: &Received<'_>,
    expect_dead: impl Fn(u64) -> bool,
    broker: Option<BrokerCounts>,
) -> TriggerAccount {
    let a = r.accepted;
    let lost: Vec<u64> = a
        .iter()
        .filter(|&s| !r.delivered.contains(s) && !r.dead.contains(s))
        .collect();
    let both: Vec<u64> = r.dead.iter().filter(|&s| r.delivered.contains(s)).collect();
    let unacknowledged = r
        .delivered
        .iter()
        .chain(r.dead.iter().filter(|&s| !r.delivered.contains(s)))
        .filter(|&s| !a.contains(s))
        .count() as u64;
    let expected: Vec<u64> = a.iter().filter(|&s| expect_dead(s)).collect();
    let unexpected: Vec<u64> = r.dead.iter().filter(|&s| !expect_dead(s)).collect();
    let missing: Vec<u64> = expected
        .iter()
        .copied()
        .filter(|&s| !r.dead.contains(s))
        .collect();
    let mut acc = TriggerAccount {
        trigger,
        role,
        accepted: a.len(),
        delivered: r.delivered.len(),
        dead_lettered: r.dead.len(),
        lost: lost.len() as u64,
        both: both.len() as u64,
        unacknowledged,
        duplicate_deliveries: r.deliveries.saturating_sub(r.delivered.len()),
        duplicate_dead_letters: r.dead_letters.saturating_sub(r.dead.len()),
        expected_dead_letters: expected.len() as u64,
        unexpected_dead_letters: unexpected.len() as u64,
        missing_dead_letters: missing.len() as u64,
        sink_retries: r.retries,
        broker: broker.clone(),
        problems: Vec::new(),
    };
    let p = &mut acc.problems;
    if !lost.is_empty() {
        p.push(format!(
            "{} accepted events neither delivered nor dead-lettered (e.g. {})",
            lost.len(),
            examples(lost.iter().copied())
        ));
    }
    if !both.is_empty() {
        p.push(format!(
            "{} events both delivered and dead-lettered (e.g. {})",
            both.len(),
            examples(both.iter().copied())
        ));
    }
    if unacknowledged > 0 {
        p.push(format!(
            "{unacknowledged} events arrived that the ingress did not acknowledge"
        ));
    }
    if acc.duplicate_deliveries > 0 || acc.duplicate_dead_letters > 0 {
        p.push(format!(
            "duplicates: {} deliveries, {} dead letters",
            acc.duplicate_deliveries, acc.duplicate_dead_letters
        ));
    }
    if !unexpected.is_empty() {
        p.push(format!(
            "{} dead letters whose attempts were not all refused (e.g. {})",
            unexpected.len(),
            examples(unexpected.iter().copied())
        ));
    }
    if !missing.is_empty() {
        p.push(format!(
            "{} events refused at every attempt but not dead-lettered (e.g. {})",
            missing.len(),
            examples(missing.iter().copied())
        ));
    }
    match broker {
        None => p.push("the broker's counters could not be read".into()),
        Some(b) => {
            let mut differ = |what: &str, broker: u64, sink: u64| {
                if broker != sink {
                    p.push(format!("broker counts {broker} {what}, the sink {sink}"));
                }
            };
            differ("delivered", b.delivered, r.deliveries);
            differ(
                "dead-lettered",
                b.dead_lettered,
                r.dead_letters + b.dead_letters_stored,
            );
            differ("retries", b.retries, r.retries);
            if b.dead_letters_stored > 0 {
                p.push(format!(
                    "{} dead letters in the built-in store (the dead-letter sink failed)",
                    b.dead_letters_stored
                ));
            }
            if b.lag > 0 || b.in_flight > 0 {
                p.push(format!(
                    "after the drain the broker reports lag {} and {} in flight",
                    b.lag, b.in_flight
                ));
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(v: &[u64]) -> Bitset {
        let mut b = Bitset::default();
        for &s in v {
            b.insert(s);
        }
        b
    }

    fn counts(delivered: u64, retries: u64, dead: u64) -> BrokerCounts {
        BrokerCounts {
            delivered,
            retries,
            dead_lettered: dead,
            ..BrokerCounts::default()
        }
    }

    #[test]
    fn a_balanced_trigger_has_no_problem() {
        let accepted = bits(&[0, 1, 2, 3, 4]);
        let r = Received {
            accepted: &accepted,
            delivered: &bits(&[0, 1, 3, 4]),
            dead: &bits(&[2]),
            deliveries: 4,
            dead_letters: 1,
            retries: 5,
        };
        let a = account(1, Role::Failing, &r, |s| s == 2, Some(counts(4, 5, 1)));
        assert!(a.problems.is_empty(), "{:?}", a.problems);
        assert_eq!(
            (a.accepted, a.delivered, a.dead_lettered, a.lost),
            (5, 4, 1, 0)
        );
        assert_eq!(a.expected_dead_letters, 1);
        assert!(!a.lost_events());
    }

    #[test]
    fn loss_overlap_duplicates_and_miscounts_are_each_named() {
        let accepted = bits(&[0, 1, 2, 3, 4, 5]);
        let r = Received {
            accepted: &accepted,
            // 5 lost; 1 both delivered and dead-lettered; 9 never acknowledged;
            // 0 delivered twice.
            delivered: &bits(&[0, 1, 2, 9]),
            dead: &bits(&[1, 3, 4]),
            deliveries: 5,
            dead_letters: 3,
            retries: 2,
        };
        let a = account(
            0,
            Role::Healthy,
            &r,
            |s| s == 4 || s == 5,
            Some(BrokerCounts {
                lag: 1,
                ..counts(4, 2, 3)
            }),
        );
        assert!(a.lost_events());
        assert_eq!((a.lost, a.both, a.unacknowledged), (1, 1, 1));
        assert_eq!((a.duplicate_deliveries, a.duplicate_dead_letters), (1, 0));
        assert_eq!((a.unexpected_dead_letters, a.missing_dead_letters), (2, 1));
        let text = a.problems.join("\n");
        for want in [
            "1 accepted events neither delivered nor dead-lettered (e.g. 5)",
            "1 events both delivered and dead-lettered (e.g. 1)",
            "1 events arrived that the ingress did not acknowledge",
            "duplicates: 1 deliveries, 0 dead letters",
            "2 dead letters whose attempts were not all refused (e.g. 1, 3)",
            "1 events refused at every attempt but not dead-lettered (e.g. 5)",
            "broker counts 4 delivered, the sink 5",
            "lag 1 and 0 in flight",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("retries"), "{text}");
    }

    #[test]
    fn broker_counts_come_from_the_trigger_stats() {
        let stats = serde_json::json!({
            "delivered": 10, "retries": 2, "deadLettered": 1, "replies": 0,
            "inFlight": 0, "lag": 0, "deadLettersStored": 0, "subscriber": "http://x"
        });
        assert_eq!(BrokerCounts::from_stats(&stats), Some(counts(10, 2, 1)));
        assert_eq!(BrokerCounts::from_stats(&serde_json::json!({})), None);
    }
}
