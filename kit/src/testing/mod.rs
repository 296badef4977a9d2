//! The test harness: a fresh PostgreSQL database per test cloned from a migrated template
//! ([`TestDb`]), a TCP proxy that can cut the database off ([`TcpProxy`]), a server started
//! in-process on an ephemeral port ([`InProcess`]), the real binaries ([`Binary`]), grpcurl and
//! curl.

mod binary;
mod credentials;
mod db;
mod http;
mod in_process;
mod issuer;
mod proxy;
mod schema;

pub use binary::{
    Binary, assert_grpcurl_lists, free_port, grpcurl, grpcurl_ok, grpcurl_result, workspace_binary,
};
pub use credentials::{with_api_key, with_bearer, with_metadata};
pub use db::TestDb;
pub use http::{
    SignedUp, curl, curl_post, issue_service_key, sign_up, start_auth_svc,
    verify_email_by_logged_link,
};
pub use in_process::{InProcess, wait_for_health};
pub use issuer::{AuthServer, TestIssuer};
pub use proxy::TcpProxy;
pub use schema::{assert_migrations_revert, assert_schema_rs_matches};
