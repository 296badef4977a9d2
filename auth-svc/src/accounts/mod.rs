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

use kit::client_address::{ClientAddress, limit_key};
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

/// Where a request came from.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The address [`kit::client_address::ClientAddressLayer`] decided (a forwarded address only
    /// from a trusted proxy), else the TCP peer's; empty if unknown.
    pub address: String,
    /// `user-agent`, truncated to 512 characters; empty if unknown.
    pub user_agent: String,
}

const MAX_USER_AGENT_CHARS: usize = 512;

impl ClientInfo {
    pub fn of<T>(request: &Request<T>) -> Self {
        let address = request
            .extensions()
            .get::<ClientAddress>()
            .map(|client| client.0)
            .or_else(|| request.remote_addr().map(|peer| peer.ip()))
            .map(|address| address.to_string())
            .unwrap_or_default();
        let user_agent = request
            .metadata()
            .get("user-agent")
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(MAX_USER_AGENT_CHARS).collect())
            .unwrap_or_default();
        Self {
            address,
            user_agent,
        }
    }

    /// What the brute-force and registration limits count this client by (see
    /// [`kit::client_address::limit_key`]); sessions and the audit log keep the full address.
    pub fn limit_key(&self) -> String {
        self.address
            .parse()
            .map_or_else(|_| self.address.clone(), limit_key)
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
    fn a_forwarded_address_is_not_taken_from_the_request_itself() {
        let mut request = Request::new(());
        request.metadata_mut().insert(
            "x-forwarded-for",
            "203.0.113.7".parse().unwrap_or_else(|_| panic!()),
        );
        assert_eq!(client_address(&request), "");
        request
            .extensions_mut()
            .insert(ClientAddress([198, 51, 100, 2].into()));
        assert_eq!(client_address(&request), "198.51.100.2");
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
