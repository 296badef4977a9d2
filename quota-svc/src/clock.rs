//! The service's time source, a parameter so tests can move time (period rollover, expiry).

use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};

/// Where the service reads the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self(Mutex::new(now))
    }

    pub fn set(&self, now: DateTime<Utc>) {
        if let Ok(mut current) = self.0.lock() {
            *current = now;
        }
    }

    pub fn advance(&self, by: TimeDelta) {
        if let Ok(mut current) = self.0.lock() {
            *current += by;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
            .lock()
            .map_or_else(|poisoned| *poisoned.into_inner(), |now| *now)
    }
}
