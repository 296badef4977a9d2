//! Where a request came from, as the flows see it ([`ClientInfo`]).

use kit::client_address::ClientAddress;
use tonic::Request;

use crate::domain::{ClientInfo, MAX_USER_AGENT_CHARS};

/// The client of `request`: the address [`kit::client_address::ClientAddressLayer`] decided
/// (else the TCP peer's) and its `user-agent`, truncated.
pub fn client_info<T>(request: &Request<T>) -> ClientInfo {
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
    ClientInfo {
        address,
        user_agent,
    }
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
        assert_eq!(client_info(&request).address, "");
        request
            .extensions_mut()
            .insert(ClientAddress([198, 51, 100, 2].into()));
        assert_eq!(client_info(&request).address, "198.51.100.2");
    }
}
