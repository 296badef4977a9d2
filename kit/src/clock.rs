//! The time source of the rules that depend on it (period rollover, token expiry, lockout
//! windows): a parameter, so tests move time instead of sleeping.

use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};

/// Where a service reads the current time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved. Outside the `testing` feature (as is [`OffsetClock`])
/// so that the integration tests of every crate can hand it to a server.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self(Mutex::new(now))
    }

    pub fn set(&self, now: DateTime<Utc>) {
        *lock(&self.0) = now;
    }

    pub fn advance(&self, by: TimeDelta) {
        *lock(&self.0) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *lock(&self.0)
    }
}

/// The real time plus an offset that grows when told: for tests of rules that compare the times
/// of successive calls (attempts after the last success), which a clock standing still would
/// make equal.
#[derive(Debug, Default)]
pub struct OffsetClock(Mutex<TimeDelta>);

impl OffsetClock {
    pub fn advance(&self, by: TimeDelta) {
        *lock(&self.0) += by;
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + *lock(&self.0)
    }
}

/// A panic elsewhere while holding the lock cannot leave a half-written time behind, so a
/// poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(TimeDelta::minutes(5));
        assert_eq!(clock.now(), start + TimeDelta::minutes(5));
        clock.set(start);
        assert_eq!(clock.now(), start);
    }

    #[test]
    fn an_offset_clock_runs_ahead_by_what_it_was_told() {
        let clock = OffsetClock::default();
        clock.advance(TimeDelta::hours(2));
        let ahead = clock.now() - Utc::now();
        assert!(
            ahead > TimeDelta::minutes(119) && ahead <= TimeDelta::hours(2),
            "{ahead}"
        );
    }
}
