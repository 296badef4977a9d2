//! The in-memory application of a batch of consumptions, exactly as if they arrived one by one:
//! the store locks the counters, this decides every request in arrival order, the store writes
//! the result back in the same transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Counter, consumer::Consumer};

/// One validated Consume request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub subject: Uuid,
    pub metric: String,
    pub amount: i64,
    pub idempotency_key: String,
    /// Recorded with the consumption: who may refund it.
    pub consumer: Consumer,
}

/// The answer recorded with an idempotency key: what an allowed consumption returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub metric: String,
    pub amount: i64,
    pub usage_id: Uuid,
    /// `None` is unlimited.
    pub limit: Option<i64>,
    pub used: i64,
    pub resets_at: DateTime<Utc>,
    /// The principal that made the consumption; `None` for keys recorded before it was.
    pub consumed_by: Option<Uuid>,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Consumed now; the answer to record.
    Allowed(Recorded),
    /// The first answer to the same key, repeated; nothing consumed.
    Replayed(Recorded),
    /// Over the limit, or no entitlement for the metric (`counter` is `None`).
    Denied { counter: Option<Counter> },
    /// The key was used before with another metric or amount.
    KeyReused,
    /// The key was recorded for the subject by another principal. Replayed, it would let a user
    /// consume a key a backend is about to use, refund it as their own, and have the backend's
    /// charge answered by the replay: the work for free.
    KeyTaken,
}

/// A counter key.
pub type CounterKey = (Uuid, String);
/// An idempotency key.
pub type IdempotencyKey = (Uuid, String);

/// Decides `requests` in order against `counters` (already locked and rolled over; missing
/// means no entitlement) and `previous` (answers already recorded for their keys). Updates
/// `counters`; `new_id` names each allowed consumption.
pub fn apply(
    counters: &mut HashMap<CounterKey, Counter>,
    previous: &HashMap<IdempotencyKey, Recorded>,
    requests: &[Request],
    mut new_id: impl FnMut() -> Uuid,
) -> Vec<Decision> {
    // Keys allowed earlier in this batch answer later duplicates like keys found in the table.
    let mut recorded_here: HashMap<IdempotencyKey, Recorded> = HashMap::new();
    requests
        .iter()
        .map(|request| {
            let key = (request.subject, request.idempotency_key.clone());
            if let Some(first) = previous.get(&key).or_else(|| recorded_here.get(&key)) {
                // Checked first: another caller learns nothing of the recorded answer.
                return if first
                    .consumed_by
                    .is_some_and(|by| by != request.consumer.principal)
                {
                    Decision::KeyTaken
                } else if first.metric == request.metric && first.amount == request.amount {
                    Decision::Replayed(first.clone())
                } else {
                    Decision::KeyReused
                };
            }
            let Some(counter) = counters.get_mut(&(request.subject, request.metric.clone())) else {
                return Decision::Denied { counter: None };
            };
            // A sum past i64::MAX (amounts have no upper bound, unlimited metrics no limit) is
            // denied like one past the limit.
            let Some(used) = counter
                .used
                .checked_add(request.amount)
                .filter(|used| counter.limit.is_none_or(|limit| *used <= limit))
            else {
                return Decision::Denied {
                    counter: Some(counter.clone()),
                };
            };
            counter.used = used;
            let answer = Recorded {
                metric: request.metric.clone(),
                amount: request.amount,
                usage_id: new_id(),
                limit: counter.limit,
                used: counter.used,
                resets_at: counter.period_end,
                consumed_by: Some(request.consumer.principal),
            };
            recorded_here.insert(key, answer.clone());
            Decision::Allowed(answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use proptest::prelude::*;

    use super::*;
    use crate::domain::{Source, consumer::SignedInWith};

    /// The subject consuming its own quota.
    fn by(subject: Uuid) -> Consumer {
        Consumer {
            principal: subject,
            with: SignedInWith::Session,
        }
    }

    fn counter(limit: Option<i64>) -> Counter {
        Counter {
            limit,
            used: 0,
            period_start: "2026-01-01T00:00:00Z".parse().unwrap(),
            period_end: "2026-02-01T00:00:00Z".parse().unwrap(),
            source: Source::Plan,
        }
    }

    fn ids() -> impl FnMut() -> Uuid {
        let mut next = 0u128;
        move || {
            next += 1;
            Uuid::from_u128(next)
        }
    }

    #[test]
    fn a_duplicate_key_in_one_batch_replays_the_first_answer() {
        let subject = Uuid::from_u128(7);
        let mut counters = HashMap::from([((subject, "m".to_owned()), counter(Some(5)))]);
        let request = |key: &str, amount| Request {
            subject,
            metric: "m".to_owned(),
            amount,
            idempotency_key: key.to_owned(),
            consumer: by(subject),
        };
        let decisions = apply(
            &mut counters,
            &HashMap::new(),
            &[
                request("a", 2),
                request("a", 2),
                request("a", 3),
                request("b", 4),
            ],
            ids(),
        );
        let Decision::Allowed(first) = &decisions[0] else {
            panic!("{decisions:?}")
        };
        assert_eq!(decisions[1], Decision::Replayed(first.clone()));
        assert_eq!(decisions[2], Decision::KeyReused);
        assert!(matches!(
            decisions[3],
            Decision::Denied { counter: Some(_) }
        ));
        assert_eq!(counters[&(subject, "m".to_owned())].used, 2);
    }

    #[test]
    fn a_key_recorded_by_another_caller_is_taken_not_replayed() {
        let subject = Uuid::from_u128(7);
        let backend = Uuid::from_u128(8);
        let mut counters = HashMap::from([((subject, "m".to_owned()), counter(Some(5)))]);
        let request = |key: &str, principal| Request {
            subject,
            metric: "m".to_owned(),
            amount: 1,
            idempotency_key: key.to_owned(),
            consumer: by(principal),
        };
        let mut legacy = HashMap::new();
        let first = |key: &str| {
            apply(
                &mut counters.clone(),
                &HashMap::new(),
                &[request(key, subject)],
                ids(),
            )
        };
        let Decision::Allowed(mut recorded) = first("old").remove(0) else {
            panic!("allowed")
        };
        recorded.consumed_by = None;
        legacy.insert((subject, "old".to_owned()), recorded.clone());
        let decisions = apply(
            &mut counters,
            &legacy,
            &[
                request("a", subject),
                request("a", backend),
                request("a", subject),
                request("old", backend),
            ],
            ids(),
        );
        let Decision::Allowed(first) = &decisions[0] else {
            panic!("{decisions:?}")
        };
        assert_eq!(first.consumed_by, Some(subject));
        assert_eq!(decisions[1], Decision::KeyTaken);
        assert_eq!(decisions[2], Decision::Replayed(first.clone()));
        // Recorded before consumers were: replayed for anyone.
        assert_eq!(decisions[3], Decision::Replayed(recorded));
        assert_eq!(counters[&(subject, "m".to_owned())].used, 1);
    }

    #[test]
    fn unknown_metrics_are_denied() {
        let decisions = apply(
            &mut HashMap::new(),
            &HashMap::new(),
            &[Request {
                subject: Uuid::from_u128(1),
                metric: "nope".to_owned(),
                amount: 1,
                idempotency_key: "k".to_owned(),
                consumer: by(Uuid::from_u128(1)),
            }],
            ids(),
        );
        assert_eq!(decisions, vec![Decision::Denied { counter: None }]);
    }

    #[test]
    fn sums_past_i64_max_are_denied_not_wrapped() {
        let subject = Uuid::from_u128(1);
        let request = |metric: &str, amount, key: &str| Request {
            subject,
            metric: metric.to_owned(),
            amount,
            idempotency_key: key.to_owned(),
            consumer: by(subject),
        };
        let mut counters = HashMap::from([
            ((subject, "unlimited".to_owned()), counter(None)),
            ((subject, "max".to_owned()), counter(Some(i64::MAX))),
        ]);
        let decisions = apply(
            &mut counters,
            &HashMap::new(),
            &[
                request("unlimited", i64::MAX - 1, "a"),
                request("unlimited", 2, "b"),
                request("unlimited", 1, "c"),
                request("max", i64::MAX, "d"),
                request("max", i64::MAX, "e"),
            ],
            ids(),
        );
        assert!(matches!(decisions[0], Decision::Allowed(_)));
        let Decision::Denied {
            counter: Some(unlimited),
        } = &decisions[1]
        else {
            panic!("{decisions:?}")
        };
        assert_eq!(unlimited.used, i64::MAX - 1);
        let Decision::Allowed(last) = &decisions[2] else {
            panic!("{decisions:?}")
        };
        assert_eq!(last.used, i64::MAX);
        assert!(matches!(decisions[3], Decision::Allowed(_)));
        assert!(matches!(decisions[4], Decision::Denied { .. }));
        assert_eq!(counters[&(subject, "unlimited".to_owned())].used, i64::MAX);
        assert_eq!(counters[&(subject, "max".to_owned())].used, i64::MAX);
    }

    /// Mostly small amounts, sometimes ones near i64::MAX (so sums overflow).
    fn amount() -> impl Strategy<Value = i64> {
        prop_oneof![4 => 1i64..6, 1 => (i64::MAX - 4)..=i64::MAX]
    }

    /// No limit, a small one, or i64::MAX.
    fn limit() -> impl Strategy<Value = Option<i64>> {
        prop_oneof![
            1 => Just(None),
            3 => (0i64..20).prop_map(Some),
            1 => Just(Some(i64::MAX)),
        ]
    }

    fn requests() -> impl Strategy<Value = Vec<Request>> {
        // The subject itself, or one backend charging every subject.
        let raw = (0u128..3, 0usize..3, amount(), 0u8..12, prop::bool::ANY);
        prop::collection::vec(raw, 0..60).prop_map(|raw| {
            raw.into_iter()
                .map(|(subject, metric, amount, key, backend)| Request {
                    subject: Uuid::from_u128(subject),
                    metric: ["a", "b", "c"][metric].to_owned(),
                    amount,
                    idempotency_key: format!("k{key}"),
                    consumer: by(Uuid::from_u128(if backend { 100 } else { subject })),
                })
                .collect()
        })
    }

    fn counters(limits: &[Option<i64>]) -> HashMap<CounterKey, Counter> {
        let mut counters = HashMap::new();
        for subject in 0..3u128 {
            // Metric "c" has no entitlement.
            for (metric, limit) in ["a", "b"].iter().zip(limits) {
                counters.insert(
                    (Uuid::from_u128(subject), (*metric).to_owned()),
                    counter(*limit),
                );
            }
        }
        counters
    }

    proptest! {
        #[test]
        fn a_batch_equals_one_by_one_and_never_exceeds_the_limit(
            requests in requests(),
            limit_a in limit(),
            limit_b in limit(),
        ) {
            let limits = [limit_a, limit_b];
            let mut batched = counters(&limits);
            let batch = apply(&mut batched, &HashMap::new(), &requests, ids());

            let mut sequential = counters(&limits);
            let mut recorded = HashMap::new();
            let mut new_id = ids();
            let mut one_by_one = Vec::new();
            for request in &requests {
                let decision = apply(&mut sequential, &recorded, std::slice::from_ref(request), &mut new_id).remove(0);
                if let Decision::Allowed(answer) = &decision {
                    recorded.insert((request.subject, request.idempotency_key.clone()), answer.clone());
                }
                one_by_one.push(decision);
            }
            prop_assert_eq!(&batch, &one_by_one);
            prop_assert_eq!(&batched, &sequential);
            for counter in batched.values() {
                prop_assert!(counter.limit.is_none_or(|limit| counter.used <= limit));
            }
            // Summed wider: several counters may each be near i64::MAX.
            let granted: i128 = batch.iter().map(|d| match d { Decision::Allowed(a) => i128::from(a.amount), _ => 0 }).sum();
            let used: i128 = batched.values().map(|c| i128::from(c.used)).sum();
            prop_assert_eq!(granted, used);
        }
    }
}
