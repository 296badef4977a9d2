//! The protected routes file (`EDGE_ROUTES`, e.g. `deploy/routes.toml`): each `[[route]]` maps a
//! path prefix to an HTTP upstream with the credentials it accepts, the scope it requires and
//! optionally the quota it charges. Everything is checked when the edge starts, so a mistake stops
//! it with the route and the field named instead of surfacing on some later request.

use std::{collections::HashSet, time::Duration};

use http::Uri;
use kit::caller::scope;
use serde::Deserialize;

/// Longest prefix accepted: it is part of the quota idempotency keys, which quota-svc limits to
/// 128 characters (see [`super::request_id::idempotency_key`]).
pub const MAX_PREFIX_LEN: usize = 48;
/// The first path segments the edge serves itself besides the transcoded routes.
const EDGE_OWN_SEGMENTS: [&str; 4] = ["healthz", "readyz", "openapi.json", "docs"];
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const MAX_TIMEOUT_MS: u64 = 300_000;

/// A kind of credential a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An access token of a signed-in user (`authorization: Bearer <jwt>`).
    Jwt,
    /// An API key (`x-api-key`, `authorization: ApiKey …` or `Bearer cmk_…`).
    ApiKey,
}

/// One protected route, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// `/demo`: matches `/demo` and `/demo/…`, not `/demos`. No trailing slash.
    pub prefix: String,
    /// The upstream's base URL (`http://127.0.0.1:9090` or with a base path).
    pub upstream: Uri,
    pub credentials: Vec<CredentialKind>,
    pub scope: String,
    /// The quota metric charged per request, if any.
    pub metric: Option<String>,
    /// Units charged per request.
    pub cost: i64,
    /// Whether the prefix is removed from the path sent upstream.
    pub strip_prefix: bool,
    /// How long the upstream may take to answer with its response headers (the upload included).
    pub timeout: Duration,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    upstream: String,
    credentials: Vec<CredentialKind>,
    scope: String,
    metric: Option<String>,
    cost: Option<i64>,
    #[serde(default)]
    strip_prefix: bool,
    timeout_ms: Option<u64>,
}

/// Reads and validates the routes file at `path`.
pub fn load(path: &str) -> anyhow::Result<Vec<RouteConfig>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| anyhow::anyhow!("EDGE_ROUTES: reading {path}: {err}"))?;
    parse(&text).map_err(|err| anyhow::anyhow!("EDGE_ROUTES {path}: {err}"))
}

/// Validates a routes file's text.
pub fn parse(text: &str) -> anyhow::Result<Vec<RouteConfig>> {
    let file: File = toml::from_str(text).map_err(|err| anyhow::anyhow!("{err}"))?;
    let mut seen = HashSet::new();
    file.route
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let name = format!("route {} ({})", index + 1, raw.prefix);
            let route = validate(raw).map_err(|problem| anyhow::anyhow!("{name}: {problem}"))?;
            anyhow::ensure!(
                seen.insert(route.prefix.clone()),
                "{name}: the prefix is listed twice"
            );
            Ok(route)
        })
        .collect()
}

fn validate(raw: RawRoute) -> Result<RouteConfig, String> {
    let prefix = prefix(&raw.prefix)?;
    let upstream = upstream(&raw.upstream)?;
    if raw.credentials.is_empty() {
        return Err("credentials: name at least one of \"jwt\", \"api_key\"".to_owned());
    }
    if !scope::ALL.contains(&raw.scope.as_str()) {
        return Err(format!(
            "scope: {:?} is not one of {}",
            raw.scope,
            scope::ALL.join(", ")
        ));
    }
    if let Some(metric) = &raw.metric {
        kit::validate::metric(metric).map_err(|problem| format!("metric {metric:?}: {problem}"))?;
    }
    let cost = match (raw.cost, &raw.metric) {
        (Some(_), None) => return Err("cost: set only with a metric".to_owned()),
        (Some(cost), Some(_)) if cost < 1 => return Err("cost: must be at least 1".to_owned()),
        (cost, _) => cost.unwrap_or(1),
    };
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(format!("timeout_ms: must be 1 to {MAX_TIMEOUT_MS}"));
    }
    Ok(RouteConfig {
        prefix,
        upstream,
        credentials: raw.credentials,
        scope: raw.scope,
        metric: raw.metric,
        cost,
        strip_prefix: raw.strip_prefix,
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// `/demo` or `/demo/` → `/demo`: segments of unreserved URL characters, no `.`/`..`.
fn prefix(text: &str) -> Result<String, String> {
    let trimmed = text.strip_suffix('/').unwrap_or(text);
    let Some(path) = trimmed.strip_prefix('/') else {
        return Err("prefix: must start with `/`".to_owned());
    };
    if trimmed.len() > MAX_PREFIX_LEN {
        return Err(format!("prefix: at most {MAX_PREFIX_LEN} characters"));
    }
    let segment_ok = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    };
    if !path.split('/').all(segment_ok) {
        return Err(
            "prefix: must be `/` and path segments of A-Z a-z 0-9 - . _ ~ (not `/` alone)"
                .to_owned(),
        );
    }
    Ok(trimmed.to_owned())
}

/// `http://host:port[/base]`: plain HTTP (the edge terminates TLS; upstreams sit on the internal
/// network), no query or fragment.
fn upstream(text: &str) -> Result<Uri, String> {
    let problem = |what: &str| format!("upstream {text:?}: {what}");
    let uri: Uri = text.parse().map_err(|_| problem("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(problem("must be an http:// URL"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(problem("names no host"));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(problem("may not have a query or fragment"));
    }
    Ok(uri)
}

/// Refuses a route whose first path segment the edge already serves: a transcoded route's
/// (`taken`, e.g. `v1`) or the edge's own pages. Protected routes are matched first, so an
/// overlap would silently take paths away from the API.
pub fn refuse_clashes(routes: &[RouteConfig], taken: &HashSet<String>) -> anyhow::Result<()> {
    for route in routes {
        let first = route
            .prefix
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        anyhow::ensure!(
            !taken.contains(first) && !EDGE_OWN_SEGMENTS.contains(&first),
            "EDGE_ROUTES: route {}: /{first} is served by the edge itself (its REST routes or \
             pages); choose another prefix",
            route.prefix
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    const DEMO: &str = r#"
        [[route]]
        prefix = "/demo/"
        upstream = "http://127.0.0.1:9090"
        credentials = ["jwt", "api_key"]
        scope = "quota:consume"
        metric = "api.requests"
        cost = 2
        strip_prefix = true
    "#;

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// DEMO with `field = value` replacing the line of that field (or added).
    fn demo_with(field: &str, value: &str) -> String {
        let mut lines: Vec<String> = DEMO
            .lines()
            .filter(|line| !line.trim_start().starts_with(&format!("{field} =")))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{field} = {value}"));
        lines.join("\n")
    }

    #[test]
    fn a_valid_route_is_read_with_its_defaults() {
        let routes = parse(DEMO).unwrap();
        assert_eq!(
            routes,
            vec![RouteConfig {
                prefix: "/demo".to_owned(),
                upstream: "http://127.0.0.1:9090".parse().unwrap(),
                credentials: vec![CredentialKind::Jwt, CredentialKind::ApiKey],
                scope: "quota:consume".to_owned(),
                metric: Some("api.requests".to_owned()),
                cost: 2,
                strip_prefix: true,
                timeout: Duration::from_secs(30),
            }]
        );
        let plain = parse(
            r#"[[route]]
            prefix = "/files"
            upstream = "http://files.internal/base"
            credentials = ["api_key"]
            scope = "quota:read""#,
        )
        .unwrap();
        assert_eq!((plain[0].cost, plain[0].strip_prefix), (1, false));
        assert_eq!(plain[0].metric, None);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn mistakes_are_refused_with_the_route_and_field_named() {
        assert!(error_of(&demo_with("colour", "\"red\"")).contains("unknown field `colour`"));
        assert!(error_of(&demo_with("prefix", "\"demo\"")).contains("must start with `/`"));
        assert!(error_of(&demo_with("prefix", "\"/\"")).contains("prefix"));
        assert!(error_of(&demo_with("prefix", "\"/a//b\"")).contains("prefix"));
        assert!(error_of(&demo_with("prefix", "\"/a/../v1\"")).contains("prefix"));
        assert!(error_of(&demo_with("prefix", "\"/a b\"")).contains("prefix"));
        let long = format!("\"/{}\"", "a".repeat(MAX_PREFIX_LEN));
        assert!(error_of(&demo_with("prefix", &long)).contains("at most 48"));
        assert!(error_of(&demo_with("upstream", "\"ftp://x\"")).contains("http://"));
        assert!(error_of(&demo_with("upstream", "\"not a url\"")).contains("not a URL"));
        assert!(error_of(&demo_with("upstream", "\"http://x/?a=1\"")).contains("query"));
        assert!(error_of(&demo_with("credentials", "[]")).contains("credentials"));
        assert!(error_of(&demo_with("credentials", "[\"password\"]")).contains("unknown variant"));
        assert!(error_of(&demo_with("scope", "\"everything\"")).contains("scope"));
        assert!(error_of(&demo_with("metric", "\"API Calls\"")).contains("metric"));
        assert!(error_of(&demo_with("cost", "0")).contains("at least 1"));
        assert!(error_of(&demo_with("timeout_ms", "0")).contains("timeout_ms"));
        let message = error_of(&demo_with("cost", "-1"));
        assert!(message.starts_with("route 1 (/demo/): cost"), "{message}");
        let without_metric = DEMO.replace("metric = \"api.requests\"", "");
        assert!(error_of(&without_metric).contains("only with a metric"));
        assert!(error_of(&format!("{DEMO}\n{DEMO}")).contains("listed twice"));
    }

    #[test]
    fn a_prefix_may_not_take_paths_the_edge_serves() {
        let taken: HashSet<String> = ["v1".to_owned()].into();
        let route = |prefix: &str| {
            let mut route = parse(DEMO).unwrap().remove(0);
            route.prefix = prefix.to_owned();
            route
        };
        assert!(refuse_clashes(&[route("/demo")], &taken).is_ok());
        assert!(refuse_clashes(&[route("/v1x")], &taken).is_ok());
        for clash in ["/v1", "/v1/quotas", "/healthz", "/docs/x", "/openapi.json"] {
            let message = refuse_clashes(&[route(clash)], &taken)
                .unwrap_err()
                .to_string();
            assert!(message.contains("served by the edge"), "{clash}: {message}");
        }
    }
}
