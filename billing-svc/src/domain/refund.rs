//! The rules of refunds: how much may be refunded, what a refund is called at the provider, and
//! where it stands.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{fingerprint, subscription::PaymentStatus};

text_enum! {
    /// Where a refund stands (`refunds.status`).
    RefundState {
        /// Recorded, its amount reserved; the provider has not answered yet.
        Pending = "pending",
        /// Accepted by the provider; the outcome comes by notification or query.
        Processing = "processing",
        Succeeded = "succeeded",
        /// The provider refused or gave up; the reservation was released.
        Failed = "failed",
    }
}

impl RefundState {
    /// Whether the refund still waits for the provider.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Processing)
    }
}

/// Why a refund cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefused {
    #[error("amount_minor: must be positive")]
    NotPositive,
    #[error("amount_minor: {requested} is above the refundable remainder {remaining}")]
    AboveRemainder { requested: i64, remaining: i64 },
    #[error("the payment is fully refunded already")]
    NothingLeft,
}

/// The amount a refund takes from a payment of `amount` of which `refunded` is refunded or
/// reserved: `requested`, or the whole remainder when absent (0 counts as absent, like the
/// contract's proto3 default).
pub fn amount(requested: Option<i64>, amount: i64, refunded: i64) -> Result<i64, RefundRefused> {
    let remaining = amount - refunded;
    match requested.filter(|&requested| requested != 0) {
        None if remaining <= 0 => Err(RefundRefused::NothingLeft),
        None => Ok(remaining),
        Some(requested) if requested < 0 => Err(RefundRefused::NotPositive),
        Some(requested) if requested > remaining => Err(RefundRefused::AboveRemainder {
            requested,
            remaining,
        }),
        Some(requested) => Ok(requested),
    }
}

/// A paid payment's status once `refunded` of its `amount` is refunded or reserved.
pub fn status_after(amount: i64, refunded: i64) -> PaymentStatus {
    if refunded == 0 {
        PaymentStatus::Succeeded
    } else if refunded >= amount {
        PaymentStatus::Refunded
    } else {
        PaymentStatus::PartiallyRefunded
    }
}

/// The refund's name at the provider for idempotency key `key` of `payment`: 32 hex digits of a
/// hash of both, so a retry with the same key names the same refund (and the provider refunds
/// it once) even if our record of the first attempt were lost.
pub fn out_refund_no(payment: Uuid, key: &str) -> String {
    let digest = Sha256::digest(fingerprint::of(&[&payment.to_string(), key]));
    hex::encode(&digest[..16])
}

/// What a retry must repeat for its idempotency key to replay the refund.
pub fn request_fingerprint(requested: Option<i64>, reason: &str) -> Vec<u8> {
    let requested = requested.filter(|&amount| amount != 0).unwrap_or(0);
    fingerprint::of(&[&requested.to_string(), reason])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remainder_bounds_every_refund() {
        assert_eq!(amount(None, 1999, 0), Ok(1999));
        assert_eq!(amount(Some(0), 1999, 500), Ok(1499));
        assert_eq!(amount(Some(500), 1999, 1000), Ok(500));
        assert_eq!(amount(Some(999), 1999, 1000), Ok(999));
        assert_eq!(
            amount(Some(1000), 1999, 1000),
            Err(RefundRefused::AboveRemainder {
                requested: 1000,
                remaining: 999
            })
        );
        assert_eq!(amount(Some(-1), 1999, 0), Err(RefundRefused::NotPositive));
        assert_eq!(amount(None, 1999, 1999), Err(RefundRefused::NothingLeft));
    }

    #[test]
    fn the_status_follows_the_refunded_amount() {
        assert_eq!(status_after(1999, 0), PaymentStatus::Succeeded);
        assert_eq!(status_after(1999, 1), PaymentStatus::PartiallyRefunded);
        assert_eq!(status_after(1999, 1999), PaymentStatus::Refunded);
    }

    #[test]
    fn a_refund_name_is_stable_per_key_and_distinct_across_keys_and_payments() {
        let payment = Uuid::now_v7();
        let name = out_refund_no(payment, "r1");
        assert_eq!(name.len(), 32);
        assert_eq!(name, out_refund_no(payment, "r1"));
        assert_ne!(name, out_refund_no(payment, "r2"));
        assert_ne!(name, out_refund_no(Uuid::now_v7(), "r1"));
    }

    #[test]
    fn an_absent_amount_and_zero_are_the_same_request() {
        assert_eq!(
            request_fingerprint(None, "x"),
            request_fingerprint(Some(0), "x")
        );
        assert_ne!(
            request_fingerprint(Some(1), "x"),
            request_fingerprint(None, "x")
        );
        assert_ne!(
            request_fingerprint(None, "x"),
            request_fingerprint(None, "y")
        );
    }
}
