//! Plain HTTP the way a user tries the mesh: curl, with JSON bodies; the auth-svc CLI's
//! service keys, as `just up` issues them; and email verification by the logged link.

use std::{process::Command, time::Duration};

use serde_json::{Value, json};

use super::{Binary, workspace_binary};

/// Runs curl with `args`; returns the status and the body (JSON if it parses, else a string).
pub fn curl(args: &[&str]) -> (u16, Value) {
    let output = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running curl: {err}"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl {args:?} printed no status: {text}"));
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    let status = status
        .parse()
        .unwrap_or_else(|err| panic!("curl status {status:?}: {err}"));
    (status, body)
}

/// POSTs `body` as JSON to `url` with the extra curl arguments `auth` (e.g. `-H`, a header).
pub fn curl_post(url: &str, auth: &[&str], body: &Value) -> (u16, Value) {
    let body = body.to_string();
    curl(
        &[
            auth,
            &["-H", "content-type: application/json", "-d", &body, url],
        ]
        .concat(),
    )
}

/// The auth-svc binary serving `database_url` with `master_key`, its mail (links included) going
/// to its log as under `just up`.
pub fn start_auth_svc(database_url: &str, master_key: &str) -> Binary {
    Binary::start(
        &workspace_binary("auth-svc"),
        "AUTH",
        database_url,
        &[("AUTH_MASTER_KEY", master_key), ("AUTH_LOG_MAIL", "true")],
    )
}

/// Issues a service account's API key with `scopes` through the auth-svc CLI on `database_url`
/// sealed with `master_key`, as `just up` does.
pub fn issue_service_key(
    database_url: &str,
    master_key: &str,
    service: &str,
    scopes: &str,
) -> String {
    let output = Command::new(workspace_binary("auth-svc"))
        .args([
            "service-key",
            "issue",
            "--service",
            service,
            "--scopes",
            scopes,
        ])
        .env("AUTH_DATABASE_URL", database_url)
        .env("AUTH_MASTER_KEY", master_key)
        .output()
        .unwrap_or_else(|err| panic!("running auth-svc service-key issue: {err}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Confirms `email` through the edge proxy at `base` as a `just up` user does: auth-svc without
/// SMTP logs the link of each mail, so the newest verification link to `email` is read from
/// `auth`'s output (waiting briefly: mail is sent in the background) and its token is posted to
/// `/v1/auth/verify-email`.
pub fn verify_email_by_logged_link(auth: &Binary, base: &str, email: &str) {
    const LINK: &str = "verify-email?token=";
    let mut token = None;
    for _ in 0..100 {
        token = auth
            .log()
            .lines()
            .filter(|line| line.contains(email))
            .filter_map(|line| line.rsplit_once(LINK))
            .map(|(_, rest)| {
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
                    .collect::<String>()
            })
            .next_back();
        if token.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = token.unwrap_or_else(|| panic!("auth-svc logged no verification link to {email}"));
    let (status, body) = curl_post(
        &format!("{base}/v1/auth/verify-email"),
        &[],
        &json!({ "token": token }),
    );
    assert_eq!(status, 200, "verifying {email}: {body}");
}

/// A user signed up through the edge proxy: their id and an `authorization: Bearer …` header.
pub struct SignedUp {
    pub user_id: String,
    pub bearer: String,
}

/// Signs `username` (email `<username>@example.org`) up through the edge proxy at `base` as a
/// `just up` user does: registers, follows the logged verification link (API keys need a
/// verified email), and logs in.
pub fn sign_up(auth: &Binary, base: &str, username: &str) -> SignedUp {
    const PASSWORD: &str = "correct horse battery staple 42";
    let email = format!("{username}@example.org");
    let (status, registered) = curl_post(
        &format!("{base}/v1/auth/register"),
        &[],
        &json!({"email": email, "username": username, "password": PASSWORD}),
    );
    assert_eq!(status, 200, "registering {username}: {registered}");
    verify_email_by_logged_link(auth, base, &email);
    let (status, login) = curl_post(
        &format!("{base}/v1/auth/login"),
        &[],
        &json!({"usernameOrEmail": username, "password": PASSWORD}),
    );
    assert_eq!(status, 200, "logging {username} in: {login}");
    let token = login["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token in {login}"));
    SignedUp {
        user_id: registered["user"]["userId"]
            .as_str()
            .unwrap_or_else(|| panic!("no user id in {registered}"))
            .to_owned(),
        bearer: format!("authorization: Bearer {token}"),
    }
}
