//! Accounts: registration, sign-in sessions, lockout, email verification, password reset and the
//! administration of users. The rules are plain functions (validation, password policy, lockout,
//! refresh rotation) tested without a database; the flows combine them with `crate::store`.

pub mod admin;
pub mod config;
pub mod lockout;
pub mod password;
pub mod secret;
pub mod sessions;
pub mod users;
pub mod validate;

pub use config::{AccountsArgs, Config};

use tonic::Request;

/// The lifecycle state of an account, as stored in `users.status`.
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

    /// The status stored as `text`; an unknown value is treated as deleted (refuse everything).
    pub fn parse(text: &str) -> Self {
        match text {
            "active" => Self::Active,
            "disabled" => Self::Disabled,
            _ => Self::Deleted,
        }
    }
}

/// Where a request came from, as reported by the edge proxy.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// First `x-forwarded-for` entry, else the peer IP; empty if unknown.
    pub address: String,
    /// `user-agent`, truncated to 512 characters; empty if unknown.
    pub user_agent: String,
}

const MAX_USER_AGENT_CHARS: usize = 512;

impl ClientInfo {
    pub fn of<T>(request: &Request<T>) -> Self {
        let metadata = request.metadata();
        let address = metadata
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok())
            .and_then(|list| list.split(',').next())
            .map(str::trim)
            .filter(|first| !first.is_empty())
            .map(str::to_owned)
            .or_else(|| request.remote_addr().map(|peer| peer.ip().to_string()))
            .unwrap_or_default();
        let user_agent = metadata
            .get("user-agent")
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(MAX_USER_AGENT_CHARS).collect())
            .unwrap_or_default();
        Self {
            address,
            user_agent,
        }
    }
}

/// The client address of `request` (see [`ClientInfo`]).
pub fn client_address<T>(request: &Request<T>) -> String {
    ClientInfo::of(request).address
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_forwarded_address_wins() {
        let mut request = Request::new(());
        request.metadata_mut().insert(
            "x-forwarded-for",
            "203.0.113.7, 10.0.0.1".parse().unwrap_or_else(|_| panic!()),
        );
        assert_eq!(client_address(&request), "203.0.113.7");
        assert_eq!(client_address(&Request::new(())), "");
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            UserStatus::Active,
            UserStatus::Disabled,
            UserStatus::Deleted,
        ] {
            assert_eq!(UserStatus::parse(status.as_str()), status);
        }
        assert_eq!(UserStatus::parse("bogus"), UserStatus::Deleted);
    }
}
