//! The subscription and payment state machines: what a successful payment, a cancellation and
//! the passing of time do to a subscription. Pure: the store applies each decision with a
//! conditional UPDATE on the state it was decided from.

use chrono::{DateTime, TimeDelta, Utc};

use super::plan::Period;

text_enum! {
    /// A subscription's lifecycle state.
    SubscriptionStatus {
        PendingPayment = "pending_payment",
        Active = "active",
        PastDue = "past_due",
        Canceled = "canceled",
        Expired = "expired",
    }
}

text_enum! {
    /// A payment's lifecycle state.
    PaymentStatus {
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
        Canceled = "canceled",
        Refunded = "refunded",
        PartiallyRefunded = "partially_refunded",
    }
}

text_enum! {
    /// What a payment's success does to its subscription: start a PENDING_PAYMENT one (first
    /// period), extend an ACTIVE one or restart a PAST_DUE one (renewal), or move it to the
    /// payment's plan with a new period (plan change).
    Purpose {
        FirstPeriod = "first_period",
        Renewal = "renewal",
        ChangePlan = "change_plan",
    }
}

impl SubscriptionStatus {
    /// PENDING_PAYMENT, ACTIVE and PAST_DUE: at most one per user.
    pub fn is_current(self) -> bool {
        matches!(
            self,
            SubscriptionStatus::PendingPayment
                | SubscriptionStatus::Active
                | SubscriptionStatus::PastDue
        )
    }
}

/// A subscription as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub status: SubscriptionStatus,
    pub plan_code: String,
    /// `[current_period_start, current_period_end)`; `None` before the first payment.
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub cancel_at_period_end: bool,
}

/// Why a rule does not apply; each maps to FAILED_PRECONDITION.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the subscription is {0}; this needs another state")]
    WrongState(&'static str),
    #[error("the period would end past the calendar's range")]
    OutOfRange,
}

/// The subscription after a successful payment: ACTIVE on `plan_code` for `period`, with
/// `cancel_at_period_end` cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activated {
    pub plan_code: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// What a payment for `plan_code` of `period` length, with `purpose`, paid at `paid_at`, does to
/// `subscription`:
/// * first period: PENDING_PAYMENT → ACTIVE for `[paid_at, +period)`;
/// * renewal of ACTIVE: the period is extended by one interval from its end;
/// * renewal of PAST_DUE, or a plan change: a new period starts at the payment time.
pub fn payment_succeeded(
    subscription: &SubscriptionState,
    purpose: Purpose,
    plan_code: &str,
    period: Period,
    paid_at: DateTime<Utc>,
) -> Result<Activated, Refused> {
    use SubscriptionStatus::{Active, PastDue, PendingPayment};
    let fresh = || {
        Ok(Activated {
            plan_code: plan_code.to_owned(),
            period_start: paid_at,
            period_end: period.end(paid_at).ok_or(Refused::OutOfRange)?,
        })
    };
    match (purpose, subscription.status, subscription.period) {
        (Purpose::FirstPeriod, PendingPayment, _) => fresh(),
        (Purpose::Renewal, Active, Some((start, end))) => Ok(Activated {
            plan_code: subscription.plan_code.clone(),
            period_start: start,
            period_end: period.end(end).ok_or(Refused::OutOfRange)?,
        }),
        (Purpose::Renewal, PastDue, _) | (Purpose::ChangePlan, Active | PastDue, _) => fresh(),
        (_, status, _) => Err(Refused::WrongState(status.as_str())),
    }
}

/// What a payment created now for `subscription` is for; `Err` when it cannot be paid for.
pub fn purpose_of_new_payment(status: SubscriptionStatus) -> Result<Purpose, Refused> {
    match status {
        SubscriptionStatus::PendingPayment => Ok(Purpose::FirstPeriod),
        SubscriptionStatus::Active | SubscriptionStatus::PastDue => Ok(Purpose::Renewal),
        other => Err(Refused::WrongState(other.as_str())),
    }
}

/// What CancelSubscription does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// CANCELED now; plan limits withdrawn (if it had any) and the pending payment canceled.
    Now,
    /// Stays ACTIVE with `cancel_at_period_end`; CANCELED when the period ends.
    AtPeriodEnd,
    /// Already what was asked: nothing changes.
    AlreadyDone,
}

/// What cancelling `subscription` does, `at_period_end` or now. PENDING_PAYMENT and PAST_DUE
/// are always canceled at once; a canceled one is already done (repeats are OK).
pub fn cancellation(subscription: &SubscriptionState, at_period_end: bool) -> Cancellation {
    match subscription.status {
        SubscriptionStatus::Canceled => Cancellation::AlreadyDone,
        SubscriptionStatus::Active if at_period_end && subscription.cancel_at_period_end => {
            Cancellation::AlreadyDone
        }
        SubscriptionStatus::Active if at_period_end => Cancellation::AtPeriodEnd,
        _ => Cancellation::Now,
    }
}

/// What the end of an ACTIVE subscription's period does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodEnded {
    /// It was set to cancel at period end.
    Canceled,
    /// Not renewed: limits suspended until paid, EXPIRED after the grace period.
    PastDue,
}

/// The end of the period of an ACTIVE subscription.
pub fn period_ended(cancel_at_period_end: bool) -> PeriodEnded {
    if cancel_at_period_end {
        PeriodEnded::Canceled
    } else {
        PeriodEnded::PastDue
    }
}

/// When a PAST_DUE subscription whose period ended at `period_end` expires.
pub fn expires_at(period_end: DateTime<Utc>, grace: TimeDelta) -> DateTime<Utc> {
    period_end.checked_add_signed(grace).unwrap_or(period_end)
}

/// The billing interval of `period` length, counted from `start`, that holds `at` (the last one
/// before `end` when `at` is past it): the quota period of a subscription paid through `end`,
/// which may span several intervals when renewed in advance.
pub fn interval_at(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    period: Period,
    at: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let mut interval_start = start;
    loop {
        let Some(interval_end) = period.end(interval_start).filter(|next| *next < end) else {
            return (interval_start, end);
        };
        if at < interval_end {
            return (interval_start, interval_end);
        }
        interval_start = interval_end;
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use chrono::TimeZone;

    use super::*;
    use crate::domain::plan::Interval;

    fn at(month: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, month, day, 12, 0, 0).unwrap()
    }

    const MONTHLY: Period = Period {
        interval: Interval::Month,
        count: 1,
    };

    fn state(status: SubscriptionStatus) -> SubscriptionState {
        SubscriptionState {
            status,
            plan_code: "basic".into(),
            period: (status != SubscriptionStatus::PendingPayment).then(|| (at(1, 1), at(2, 1))),
            cancel_at_period_end: true,
        }
    }

    #[test]
    fn a_first_payment_starts_the_period_when_paid() {
        let done = payment_succeeded(
            &state(SubscriptionStatus::PendingPayment),
            Purpose::FirstPeriod,
            "basic",
            MONTHLY,
            at(1, 31),
        )
        .unwrap();
        assert_eq!((done.period_start, done.period_end), (at(1, 31), at(2, 28)));
    }

    #[test]
    fn a_renewal_in_advance_extends_from_the_period_end_and_past_due_restarts() {
        let active = payment_succeeded(
            &state(SubscriptionStatus::Active),
            Purpose::Renewal,
            "basic",
            MONTHLY,
            at(1, 20),
        )
        .unwrap();
        assert_eq!(
            (active.period_start, active.period_end),
            (at(1, 1), at(3, 1))
        );
        let past_due = payment_succeeded(
            &state(SubscriptionStatus::PastDue),
            Purpose::Renewal,
            "basic",
            MONTHLY,
            at(2, 5),
        )
        .unwrap();
        assert_eq!(
            (past_due.period_start, past_due.period_end),
            (at(2, 5), at(3, 5))
        );
        let changed = payment_succeeded(
            &state(SubscriptionStatus::Active),
            Purpose::ChangePlan,
            "pro",
            MONTHLY,
            at(1, 10),
        )
        .unwrap();
        assert_eq!(changed.plan_code, "pro");
        assert_eq!(changed.period_start, at(1, 10));
    }

    #[test]
    fn payments_do_not_apply_to_ended_or_unpaid_subscriptions() {
        for status in [SubscriptionStatus::Canceled, SubscriptionStatus::Expired] {
            for purpose in [Purpose::FirstPeriod, Purpose::Renewal, Purpose::ChangePlan] {
                assert!(
                    payment_succeeded(&state(status), purpose, "basic", MONTHLY, at(1, 5)).is_err()
                );
            }
            assert!(purpose_of_new_payment(status).is_err());
        }
        assert!(
            payment_succeeded(
                &state(SubscriptionStatus::PendingPayment),
                Purpose::Renewal,
                "basic",
                MONTHLY,
                at(1, 5)
            )
            .is_err()
        );
    }

    #[test]
    fn cancellation_rules() {
        let mut active = state(SubscriptionStatus::Active);
        assert_eq!(cancellation(&active, true), Cancellation::AlreadyDone);
        assert_eq!(cancellation(&active, false), Cancellation::Now);
        active.cancel_at_period_end = false;
        assert_eq!(cancellation(&active, true), Cancellation::AtPeriodEnd);
        for status in [
            SubscriptionStatus::PendingPayment,
            SubscriptionStatus::PastDue,
        ] {
            assert_eq!(cancellation(&state(status), true), Cancellation::Now);
        }
        assert_eq!(
            cancellation(&state(SubscriptionStatus::Canceled), false),
            Cancellation::AlreadyDone
        );
        assert_eq!(period_ended(true), PeriodEnded::Canceled);
        assert_eq!(period_ended(false), PeriodEnded::PastDue);
    }

    #[test]
    fn the_quota_interval_of_a_subscription_paid_in_advance() {
        let (start, end) = (at(1, 1), at(4, 1));
        assert_eq!(
            interval_at(start, end, MONTHLY, at(1, 15)),
            (at(1, 1), at(2, 1))
        );
        assert_eq!(
            interval_at(start, end, MONTHLY, at(2, 1)),
            (at(2, 1), at(3, 1))
        );
        assert_eq!(
            interval_at(start, end, MONTHLY, at(3, 31)),
            (at(3, 1), at(4, 1))
        );
        assert_eq!(
            interval_at(start, end, MONTHLY, at(5, 1)),
            (at(3, 1), at(4, 1))
        );
        // A period shorter than one interval (the plan changed) is one interval.
        assert_eq!(
            interval_at(at(1, 1), at(1, 20), MONTHLY, at(1, 5)),
            (at(1, 1), at(1, 20))
        );
    }

    #[test]
    fn stored_values_round_trip() {
        for status in [
            SubscriptionStatus::PendingPayment,
            SubscriptionStatus::Active,
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Canceled,
            SubscriptionStatus::Expired,
        ] {
            assert_eq!(SubscriptionStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(
            PaymentStatus::parse("partially_refunded"),
            Some(PaymentStatus::PartiallyRefunded)
        );
        assert_eq!(Purpose::parse("nope"), None);
    }
}
