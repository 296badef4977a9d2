//! The time source of the rules that depend on it (lockout windows, token expiry), so tests can
//! move time forward instead of sleeping.

use chrono::{DateTime, Utc};

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
