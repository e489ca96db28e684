//! A watchdog for partitions that no member of a consumer group reads.
//!
//! On Apache Kafka a crashed member's partitions go to the survivors after the
//! session timeout. Some Kafka-protocol servers get that wrong: tansu 0.6 notices
//! the missed heartbeats, removes the dead member and answers the survivors'
//! heartbeats with `REBALANCE_IN_PROGRESS`, but keeps the group "formed" with the
//! old generation and the old assignment. The survivors rejoin, are handed their
//! old partitions again, and the dead member's partitions are read by nobody, for
//! ever: every event appended to them, acknowledged with 202, is never delivered.
//!
//! So each subscription checks its group now and then (`DescribeGroups`). A stable
//! group whose members' assignments do not cover every partition of the topic
//! leaves an orphan; when the members' assignments are not reported (tansu sends
//! them empty), holding fewer partitions than an even share (`partitions /
//! members`, rounded down) betrays an assignment computed for more members than
//! the group has. When the same verdict with the same own assignment holds on two
//! checks in a row (a rebalance in progress is not mistaken for one), the
//! subscription leaves the group and joins again: its finished offsets are
//! committed on the revocation, and the fresh join makes the coordinator compute
//! a new assignment over the live members. Apache Kafka never trips it.
//!
//! Not covered: more members than partitions on a server that reports no
//! assignments, where an even share is zero.

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::groups::GroupInfo;

/// What a check of the group found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing wrong, or nothing to tell (group not stable, not a member yet).
    Fine,
    /// Some partitions are read by no member; `mine` is this member's assignment.
    Orphans { mine: Vec<i32>, why: String },
}

/// Why a check of the group could not be made (the watchdog logs it and tries
/// again at the next check).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error("reading this member's assignment in group {group}: {error}")]
    Assignment { group: String, error: KafkaError },
    #[error("describing group {group}: {error}")]
    Describe { group: String, error: KafkaError },
}

/// How often a subscription checks its group.
pub(crate) fn check_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Decides from a group description and this member's own assignment.
pub(crate) fn judge(
    state: &str,
    assignments: &[Option<&[u8]>],
    topic: &str,
    partitions: i32,
    mut mine: Vec<i32>,
) -> Verdict {
    mine.sort_unstable();
    // Not a member yet, or (more members than partitions) nothing to judge by.
    if !state.eq_ignore_ascii_case("stable") || assignments.is_empty() || mine.is_empty() {
        return Verdict::Fine;
    }
    let decoded: Option<Vec<Vec<i32>>> = assignments
        .iter()
        .map(|a| {
            a.filter(|a| !a.is_empty())
                .and_then(|a| decode_assignment(a, topic))
        })
        .collect();
    match decoded {
        Some(all) => {
            let covered: BTreeSet<i32> = all.into_iter().flatten().collect();
            let orphans: Vec<i32> = (0..partitions).filter(|p| !covered.contains(p)).collect();
            if orphans.is_empty() {
                Verdict::Fine
            } else {
                Verdict::Orphans {
                    mine,
                    why: format!("partitions {orphans:?} are assigned to no member"),
                }
            }
        }
        None => {
            let members = i32::try_from(assignments.len()).unwrap_or(i32::MAX);
            let share = partitions / members;
            if i32::try_from(mine.len()).unwrap_or(i32::MAX) < share {
                Verdict::Orphans {
                    why: format!(
                        "this member holds {} of {partitions} partitions in a stable group of \
                         {members} (an even share is at least {share})",
                        mine.len()
                    ),
                    mine,
                }
            } else {
                Verdict::Fine
            }
        }
    }
}

/// Checks the group of `consumer` (blocking: one `DescribeGroups`).
pub(crate) fn check<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    partitions: i32,
    group: &str,
    timeout: Duration,
) -> Result<Verdict, CheckError> {
    let mine: Vec<i32> = consumer
        .assignment()
        .map_err(|error| CheckError::Assignment {
            group: group.to_owned(),
            error,
        })?
        .elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect();
    if mine.is_empty() {
        return Ok(Verdict::Fine);
    }
    let list = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(|error| CheckError::Describe {
            group: group.to_owned(),
            error,
        })?;
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return Ok(Verdict::Fine);
    };
    Ok(judge_info(info, topic, partitions, mine))
}

fn judge_info(info: &GroupInfo, topic: &str, partitions: i32, mine: Vec<i32>) -> Verdict {
    let assignments: Vec<Option<&[u8]>> = info.members().iter().map(|m| m.assignment()).collect();
    judge(info.state(), &assignments, topic, partitions, mine)
}

/// The partitions of `topic` in a consumer-protocol assignment (`version: i16`,
/// `[topic: string, [partition: i32]]`, user data); `None` when it does not parse.
pub(crate) fn decode_assignment(bytes: &[u8], topic: &str) -> Option<Vec<i32>> {
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let name = r.take(len)?;
        let n = r.i32()?;
        for _ in 0..n.max(0) {
            let p = r.i32()?;
            if name == topic.as_bytes() {
                out.push(p);
            }
        }
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topic: &str, parts: &[i32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(&(parts.len() as i32).to_be_bytes());
        for p in parts {
            b.extend_from_slice(&p.to_be_bytes());
        }
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b
    }

    #[test]
    fn decodes_the_consumer_protocol_assignment() {
        let a = assignment("t", &[0, 2, 4]);
        assert_eq!(decode_assignment(&a, "t"), Some(vec![0, 2, 4]));
        assert_eq!(decode_assignment(&a, "other"), Some(vec![]));
        assert_eq!(decode_assignment(&a[..7], "t"), None);
    }

    #[test]
    fn reported_assignments_must_cover_every_partition() {
        let (a, b) = (assignment("t", &[0, 1, 2]), assignment("t", &[3, 4, 5]));
        let both = [Some(&a[..]), Some(&b[..])];
        assert_eq!(judge("Stable", &both, "t", 6, vec![0, 1, 2]), Verdict::Fine);
        let one = [Some(&a[..])];
        assert!(matches!(
            judge("Stable", &one, "t", 6, vec![2, 1, 0]),
            Verdict::Orphans { mine, .. } if mine == vec![0, 1, 2]
        ));
        // A rebalance in progress is judged later.
        assert_eq!(
            judge("PreparingRebalance", &one, "t", 6, vec![0, 1, 2]),
            Verdict::Fine
        );
    }

    #[test]
    fn without_reported_assignments_a_short_share_is_an_orphan() {
        // tansu: members listed, assignments empty.
        let none: [Option<&[u8]>; 1] = [Some(&[])];
        assert!(matches!(
            judge("Stable", &none, "t", 6, vec![0, 1, 2]),
            Verdict::Orphans { .. }
        ));
        assert_eq!(
            judge("Stable", &none, "t", 6, (0..6).collect()),
            Verdict::Fine
        );
        let two: [Option<&[u8]>; 2] = [None, None];
        assert_eq!(judge("Stable", &two, "t", 6, vec![3, 4, 5]), Verdict::Fine);
        assert_eq!(judge("Stable", &two, "t", 7, vec![4, 5, 6]), Verdict::Fine);
        let three: [Option<&[u8]>; 3] = [None, None, None];
        // More members than partitions: an even share is zero.
        assert_eq!(judge("Stable", &three, "t", 2, vec![1]), Verdict::Fine);
        // Not assigned anything: nothing to judge by.
        assert_eq!(judge("Stable", &none, "t", 6, vec![]), Verdict::Fine);
    }
}
