//! Brute-force protection: whether a password attempt may be checked, as a pure function of the
//! recent attempts (stored in PostgreSQL, so the rule holds across restarts and replicas).

use chrono::{DateTime, Duration, Utc};

/// How many failures within `window` lock an account or a client address.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub window: Duration,
    /// Failures of one account since its last success.
    pub max_account_failures: usize,
    /// Failures from one client address, whatever the account.
    pub max_address_failures: usize,
    /// An attempt still being checked after this long was abandoned (its process died or the
    /// caller went away): it counts as a failure.
    pub abandoned_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            window: Duration::minutes(15),
            max_account_failures: 5,
            max_address_failures: 20,
            abandoned_after: Duration::seconds(15),
        }
    }
}

/// What became of a password attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Counted before its password is checked, so that concurrent guesses see each other.
    Checking,
    Failed,
    Succeeded,
}

/// One recorded password attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
}

/// Whether a new password attempt may be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The limit is reached only with attempts still being checked: ask again shortly (one of
    /// them may succeed and reset the account).
    Wait,
    /// Refused until then.
    LockedUntil(DateTime<Utc>),
}

/// The verdict on a new attempt at `now`. `account` holds the account's recent attempts,
/// `address` the client's recent unsuccessful ones (any order, older ones ignored). An attempt
/// still being checked counts towards the limit, so at most the limit is ever checked however
/// many arrive at once. Refused attempts are not recorded, so a lock lifts when the oldest
/// counted failure leaves the window.
pub fn judge(
    policy: &Policy,
    account: &[Attempt],
    address: &[Attempt],
    now: DateTime<Utc>,
) -> Verdict {
    let last_success = account
        .iter()
        .filter(|attempt| attempt.outcome == Outcome::Succeeded)
        .map(|attempt| attempt.at)
        .max();
    let since_success: Vec<Attempt> = account
        .iter()
        .copied()
        .filter(|attempt| last_success.is_none_or(|ok| attempt.at > ok))
        .collect();
    let verdicts = [
        limit(policy, &since_success, policy.max_account_failures, now),
        limit(policy, address, policy.max_address_failures, now),
    ];
    let locked_until = verdicts
        .iter()
        .filter_map(|verdict| match verdict {
            Verdict::LockedUntil(until) => Some(*until),
            Verdict::Allow | Verdict::Wait => None,
        })
        .max();
    match locked_until {
        Some(until) => Verdict::LockedUntil(until),
        None if verdicts.contains(&Verdict::Wait) => Verdict::Wait,
        None => Verdict::Allow,
    }
}

/// The verdict of one counter: `max` failures within the window lock it (0: no limit).
fn limit(policy: &Policy, attempts: &[Attempt], max: usize, now: DateTime<Utc>) -> Verdict {
    let since = now - policy.window;
    let abandoned = now - policy.abandoned_after;
    let mut failures = Vec::new();
    let mut checking = 0;
    for attempt in attempts.iter().filter(|attempt| attempt.at > since) {
        match attempt.outcome {
            Outcome::Failed => failures.push(attempt.at),
            Outcome::Checking if attempt.at <= abandoned => failures.push(attempt.at),
            Outcome::Checking => checking += 1,
            Outcome::Succeeded => {}
        }
    }
    if max == 0 || failures.len() + checking < max {
        return Verdict::Allow;
    }
    failures.sort_unstable();
    // Below the limit again once all but max-1 of the counted failures have left the window.
    match failures
        .len()
        .checked_sub(max)
        .and_then(|oldest_counted| failures.get(oldest_counted))
    {
        Some(oldest_counted) => Verdict::LockedUntil(*oldest_counted + policy.window),
        None => Verdict::Wait,
    }
}

/// Whole seconds until `until`, at least 1 (for `retry-after`).
pub fn retry_after_secs(until: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let millis = u64::try_from((until - now).num_milliseconds())
        .unwrap_or(0)
        .max(1);
    millis.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + Duration::minutes(minute)
    }

    fn attempts(minutes: &[i64], outcome: Outcome) -> Vec<Attempt> {
        minutes
            .iter()
            .map(|m| Attempt {
                at: at(*m),
                outcome,
            })
            .collect()
    }

    fn failures(minutes: &[i64]) -> Vec<Attempt> {
        attempts(minutes, Outcome::Failed)
    }

    #[test]
    fn five_account_failures_lock_until_the_window_passes() {
        let policy = Policy::default();
        let four = failures(&[0, 1, 2, 3]);
        assert_eq!(judge(&policy, &four, &[], at(4)), Verdict::Allow);
        let five = failures(&[0, 1, 2, 3, 4]);
        assert_eq!(
            judge(&policy, &five, &[], at(5)),
            Verdict::LockedUntil(at(15))
        );
        assert_eq!(
            judge(&policy, &five, &[], at(14)),
            Verdict::LockedUntil(at(15))
        );
        assert_eq!(judge(&policy, &five, &[], at(15)), Verdict::Allow);
        assert_eq!(retry_after_secs(at(15), at(14)), 60);
    }

    #[test]
    fn a_success_resets_the_account_but_not_the_address() {
        let policy = Policy::default();
        let mut account = failures(&[0, 1, 2, 3]);
        account.extend(attempts(&[4], Outcome::Succeeded));
        account.extend(failures(&[5, 6, 7, 8]));
        assert_eq!(judge(&policy, &account, &[], at(9)), Verdict::Allow);
        let address: Vec<Attempt> = (0..20)
            .map(|m| Attempt {
                at: at(m / 2),
                outcome: Outcome::Failed,
            })
            .collect();
        assert_eq!(
            judge(&policy, &[], &address, at(10)),
            Verdict::LockedUntil(at(15))
        );
        assert_eq!(judge(&policy, &[], &address[1..], at(10)), Verdict::Allow);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let policy = Policy::default();
        let old = failures(&[0, 1, 2, 20, 21]);
        assert_eq!(judge(&policy, &old, &[], at(22)), Verdict::Allow);
    }

    #[test]
    fn attempts_being_checked_count_towards_the_limit_and_make_others_wait() {
        let policy = Policy::default();
        let now = at(2);
        // Five guesses in flight: a sixth waits for them instead of being checked.
        let checking = attempts(&[2, 2, 2, 2, 2], Outcome::Checking);
        assert_eq!(judge(&policy, &checking, &[], now), Verdict::Wait);
        assert_eq!(judge(&policy, &checking[1..], &[], now), Verdict::Allow);
        let mut mixed = failures(&[0, 1, 1]);
        mixed.extend(attempts(&[2, 2], Outcome::Checking));
        assert_eq!(judge(&policy, &mixed, &[], now), Verdict::Wait);
        // Once settled as failures, they lock.
        assert_eq!(
            judge(&policy, &failures(&[0, 1, 1, 2, 2]), &[], now),
            Verdict::LockedUntil(at(15))
        );
        // The same for an address.
        let address = attempts(&[2; 20], Outcome::Checking);
        assert_eq!(judge(&policy, &[], &address, now), Verdict::Wait);
        // A lock wins over waiting.
        let locked = failures(&[0, 0, 0, 0, 0]);
        assert_eq!(
            judge(&policy, &locked, &address, now),
            Verdict::LockedUntil(at(15))
        );
    }

    #[test]
    fn an_abandoned_check_counts_as_a_failure() {
        let policy = Policy::default();
        let mut account = failures(&[0, 0, 0, 0]);
        account.extend(attempts(&[1], Outcome::Checking));
        assert_eq!(judge(&policy, &account, &[], at(1)), Verdict::Wait);
        assert_eq!(
            judge(&policy, &account, &[], at(2)),
            Verdict::LockedUntil(at(15))
        );
    }
}
