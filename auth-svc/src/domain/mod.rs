//! The rules of accounts, sessions, API keys and signing keys: plain functions and types, tested
//! without a database or a network. Nothing here does I/O; `service` applies these rules inside
//! its transactions and `store` keeps what they decide.

pub mod admin;
pub mod api_key;
pub mod audit;
pub mod lockout;
pub mod master_key;
pub mod password;
pub mod secret;
pub mod sessions;
pub mod signing_key_ring;
pub mod validate;

use std::str::FromStr;

use kit::client_address::limit_key;

/// The lifecycle state of an account, as stored in `users.status` (a CHECK constraint lists the
/// same three).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    Disabled,
    Deleted,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Deleted => "deleted",
        }
    }
}

impl FromStr for UserStatus {
    type Err = UnknownValue;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "active" => Ok(Self::Active),
            "disabled" => Ok(Self::Disabled),
            "deleted" => Ok(Self::Deleted),
            _ => Err(UnknownValue(text.to_owned())),
        }
    }
}

/// A stored text that names no value of its enum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(pub String);

/// Where a request came from.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The address [`kit::client_address::ClientAddressLayer`] decided (a forwarded address only
    /// from a trusted proxy), else the TCP peer's; empty if unknown.
    pub address: String,
    /// `user-agent`, truncated to [`MAX_USER_AGENT_CHARS`]; empty if unknown.
    pub user_agent: String,
}

/// How much of a `user-agent` sessions keep.
pub const MAX_USER_AGENT_CHARS: usize = 512;

impl ClientInfo {
    /// What the brute-force and registration limits count this client by (see
    /// [`kit::client_address::limit_key`]); sessions and the audit log keep the full address.
    pub fn limit_key(&self) -> String {
        self.address
            .parse()
            .map_or_else(|_| self.address.clone(), limit_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for status in [
            UserStatus::Active,
            UserStatus::Disabled,
            UserStatus::Deleted,
        ] {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
        assert_eq!(
            "bogus".parse::<UserStatus>(),
            Err(UnknownValue("bogus".into()))
        );
    }
}
