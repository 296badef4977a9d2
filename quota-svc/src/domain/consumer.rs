//! Who made a consumption, and who may refund it.

use uuid::Uuid;

/// How a consumer signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedInWith {
    Session,
    ApiKey,
}

impl SignedInWith {
    /// The stored form (`idempotency_keys.consumed_with`).
    pub fn as_str(self) -> &'static str {
        match self {
            SignedInWith::Session => "session",
            SignedInWith::ApiKey => "api_key",
        }
    }
}

/// The caller that made a consumption, recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    /// The caller's principal: the user of a session or of the user's own API key, the service
    /// account of a backend's or a service's key (so every key of that account counts as it).
    pub principal: Uuid,
    pub with: SignedInWith,
}

/// A caller asking for a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refunder {
    /// The caller's principal, as in [`Consumer::principal`].
    pub principal: Uuid,
    /// A service (the `service` scope) or an admin: may refund any consumption.
    pub privileged: bool,
}

/// Why a refund is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefused {
    #[error(
        "only the caller that made this consumption (the same user or service account), a \
         service or an admin may refund it"
    )]
    NotTheConsumer,
    #[error(
        "this consumption was made before quota-svc recorded who consumes; only a service or an \
         admin may refund it"
    )]
    ConsumerUnknown,
}

/// Whether `refunder` may refund a consumption made by `consumed_by` (`None`: made before
/// consumers were recorded). Every user session holds `quota:consume` and sees its usage ids and
/// keys: without this rule a user refunds what a backend charged them and uses the product for
/// free. A replay of a refund is refused the same way, so a refusal never says more than the
/// user's own usage log.
pub fn may_refund(refunder: &Refunder, consumed_by: Option<Uuid>) -> Result<(), RefundRefused> {
    match consumed_by {
        _ if refunder.privileged => Ok(()),
        Some(consumer) if consumer == refunder.principal => Ok(()),
        Some(_) => Err(RefundRefused::NotTheConsumer),
        None => Err(RefundRefused::ConsumerUnknown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Uuid = Uuid::from_u128(1);
    const BACKEND: Uuid = Uuid::from_u128(2);

    fn refunder(principal: Uuid, privileged: bool) -> Refunder {
        Refunder {
            principal,
            privileged,
        }
    }

    #[test]
    fn only_the_consumer_a_service_or_an_admin_refunds() {
        assert_eq!(
            may_refund(&refunder(USER, false), Some(BACKEND)),
            Err(RefundRefused::NotTheConsumer)
        );
        assert_eq!(may_refund(&refunder(BACKEND, false), Some(BACKEND)), Ok(()));
        assert_eq!(may_refund(&refunder(USER, false), Some(USER)), Ok(()));
        assert_eq!(may_refund(&refunder(USER, true), Some(BACKEND)), Ok(()));
    }

    #[test]
    fn consumptions_of_unknown_consumers_are_for_services_and_admins() {
        assert_eq!(
            may_refund(&refunder(USER, false), None),
            Err(RefundRefused::ConsumerUnknown)
        );
        assert_eq!(may_refund(&refunder(BACKEND, true), None), Ok(()));
    }
}
