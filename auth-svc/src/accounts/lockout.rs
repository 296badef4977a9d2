//! Brute-force protection: whether password attempts are refused, as a pure function of the
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
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            window: Duration::minutes(15),
            max_account_failures: 5,
            max_address_failures: 20,
        }
    }
}

/// One recorded password attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    pub succeeded: bool,
}

/// When attempts may resume, if they are refused at `now`. `account` holds the account's recent
/// attempts, `address_failures` the client's recent failures (any order, older ones ignored).
/// Refused attempts are not recorded, so a lock lifts when the oldest counted failure leaves
/// the window.
pub fn locked_until(
    policy: &Policy,
    account: &[Attempt],
    address_failures: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let since = now - policy.window;
    let last_success = account
        .iter()
        .filter(|attempt| attempt.succeeded)
        .map(|attempt| attempt.at)
        .max();
    let account_failures: Vec<DateTime<Utc>> = account
        .iter()
        .filter(|attempt| !attempt.succeeded && last_success.is_none_or(|ok| attempt.at > ok))
        .map(|attempt| attempt.at)
        .collect();
    [
        unlock_at(
            policy,
            &account_failures,
            policy.max_account_failures,
            since,
        ),
        unlock_at(policy, address_failures, policy.max_address_failures, since),
    ]
    .into_iter()
    .flatten()
    .max()
}

fn unlock_at(
    policy: &Policy,
    failures: &[DateTime<Utc>],
    max: usize,
    since: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut recent: Vec<DateTime<Utc>> =
        failures.iter().copied().filter(|at| *at > since).collect();
    if max == 0 || recent.len() < max {
        return None;
    }
    recent.sort_unstable();
    // Below the limit again once all but max-1 of the counted failures have left the window.
    recent.get(recent.len() - max).map(|at| *at + policy.window)
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

    fn failures(minutes: &[i64]) -> Vec<Attempt> {
        minutes
            .iter()
            .map(|m| Attempt {
                at: at(*m),
                succeeded: false,
            })
            .collect()
    }

    #[test]
    fn five_account_failures_lock_until_the_window_passes() {
        let policy = Policy::default();
        let four = failures(&[0, 1, 2, 3]);
        assert_eq!(locked_until(&policy, &four, &[], at(4)), None);
        let five = failures(&[0, 1, 2, 3, 4]);
        assert_eq!(locked_until(&policy, &five, &[], at(5)), Some(at(15)));
        assert_eq!(locked_until(&policy, &five, &[], at(14)), Some(at(15)));
        assert_eq!(locked_until(&policy, &five, &[], at(15)), None);
        assert_eq!(retry_after_secs(at(15), at(14)), 60);
    }

    #[test]
    fn a_success_resets_the_account_but_not_the_address() {
        let policy = Policy::default();
        let mut attempts = failures(&[0, 1, 2, 3]);
        attempts.push(Attempt {
            at: at(4),
            succeeded: true,
        });
        attempts.extend(failures(&[5, 6, 7, 8]));
        assert_eq!(locked_until(&policy, &attempts, &[], at(9)), None);
        let address: Vec<DateTime<Utc>> = (0..20).map(|m| at(m / 2)).collect();
        assert_eq!(locked_until(&policy, &[], &address, at(10)), Some(at(15)));
        assert_eq!(locked_until(&policy, &[], &address[1..], at(10)), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let policy = Policy::default();
        let old = failures(&[0, 1, 2, 20, 21]);
        assert_eq!(locked_until(&policy, &old, &[], at(22)), None);
    }
}
