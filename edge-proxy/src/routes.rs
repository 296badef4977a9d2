//! The REST routes, read from the contracts' `google.api.http` annotations (every rule, with its
//! `additional_bindings`), and path matching.
//!
//! Templates follow google.api.http: `/v1/users/{user_id}`, `/v1/quotas/{metric}:consume`,
//! nested fields `/v1/plans/{plan.plan_code}`, sub-templates `/v1/{name=users/*}` and
//! `/v1/{path=files/**}`, anonymous `*` segments. A literal segment beats a variable (`/v1/users/me`
//! before `/v1/users/{user_id}`).

use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MessageDescriptor, MethodDescriptor, Value,
};

/// One segment of a path template, as matched against one (or, for `**`, the rest) of a path's
/// segments.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: any one non-empty segment.
    Any,
    /// `**`: every remaining segment (at least one); only last.
    Rest,
}

/// A variable: the request field it sets and the segments it spans (`start..end`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field: String,
    start: usize,
    end: usize,
    /// Spans more than one segment (or `**`): an encoded `/` in its value stays encoded, so
    /// the value's own slashes are the path's, whatever the request matched.
    multi_segment: bool,
}

/// A route's path variables as matched: (field path, percent-decoded value), in template order.
pub type PathVariables = Vec<(String, String)>;

/// A REST route of one RPC: one `google.api.http` binding.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: http::Method,
    /// The path template as annotated.
    pub template: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    /// The custom verb after the last segment (`cancel` in `current:cancel`).
    verb: Option<String>,
    /// `*` (the whole JSON body is the request), a field name, or empty (no body).
    pub body: String,
    /// The response field that is the HTTP body, or empty (the whole response).
    pub response_body: String,
    pub method: MethodDescriptor,
}

/// Why a template could not be used.
#[derive(Debug, thiserror::Error)]
#[error("bad http rule {template:?} on {method}: {problem}")]
pub struct TemplateError {
    template: String,
    method: String,
    problem: String,
}

impl Route {
    fn parse(
        http_method: http::Method,
        template: &str,
        body: String,
        response_body: String,
        method: MethodDescriptor,
    ) -> Result<Self, TemplateError> {
        let fail = |problem: &str| TemplateError {
            template: template.to_owned(),
            method: method.full_name().to_owned(),
            problem: problem.to_owned(),
        };
        let path = template
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with /"))?;
        let (path, verb) = split_verb(path);
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for piece in split_outside_braces(path, '/') {
            if let Some(inner) = piece.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| fail("a variable must be a whole segment"))?;
                let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                if field.is_empty() || field.contains(['{', '}', '/', '*']) {
                    return Err(fail("bad variable name"));
                }
                if variables
                    .iter()
                    .any(|known: &Variable| known.field == field)
                {
                    return Err(fail("a field is bound twice"));
                }
                let start = segments.len();
                for sub in pattern.split('/') {
                    segments.push(plain_segment(sub).ok_or_else(|| fail("bad sub-template"))?);
                }
                let multi_segment =
                    segments.len() - start > 1 || segments[start..].contains(&Segment::Rest);
                variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end: segments.len(),
                    multi_segment,
                });
            } else {
                segments.push(plain_segment(piece).ok_or_else(|| fail("bad segment"))?);
            }
        }
        if segments.iter().rev().skip(1).any(|s| *s == Segment::Rest) {
            return Err(fail("** must be the last segment"));
        }
        // google.api.http: body and response_body name top-level fields only.
        if body.contains('.') || response_body.contains('.') {
            return Err(fail("body and response_body must be top-level fields"));
        }
        let input = method.input();
        let request_fields = variables.iter().map(|variable| variable.field.as_str());
        let body_field = (body != "*").then_some(body.as_str());
        if let Some(field) = request_fields
            .chain(body_field)
            .filter(|field| !field.is_empty())
            .find(|field| !has_field_path(&input, field))
        {
            return Err(fail(&format!("the request has no field {field}")));
        }
        if !response_body.is_empty() && !has_field_path(&method.output(), &response_body) {
            return Err(fail(&format!("the response has no field {response_body}")));
        }
        Ok(Self {
            http_method,
            template: template.to_owned(),
            segments,
            variables,
            verb: verb.map(str::to_owned),
            body,
            response_body,
            method,
        })
    }

    /// The path variables if `path` matches this route's template.
    pub fn matches(&self, path: &str) -> Option<PathVariables> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        let ends_in_rest = self.segments.last() == Some(&Segment::Rest);
        let fixed = self.segments.len() - usize::from(ends_in_rest);
        if parts.len() < self.segments.len() || (!ends_in_rest && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Any if !part.is_empty() => {}
                Segment::Rest if parts[fixed..].iter().all(|part| !part.is_empty()) => {}
                _ => return None,
            }
        }
        self.variables
            .iter()
            .map(|variable| {
                let end = if ends_in_rest && variable.end == self.segments.len() {
                    parts.len()
                } else {
                    variable.end
                };
                let spanned = &parts[variable.start..end];
                let value = spanned
                    .iter()
                    .map(|part| percent_decode(part, variable.multi_segment))
                    .collect::<Option<Vec<_>>>()?
                    .join("/");
                Some((variable.field.clone(), value))
            })
            .collect()
    }

    /// The template as an OpenAPI path: each variable as `{field.path}`, sub-templates dropped.
    pub fn openapi_path(&self) -> String {
        let mut path = String::new();
        let mut index = 0;
        while index < self.segments.len() {
            path.push('/');
            if let Some(variable) = self.variables.iter().find(|v| v.start == index) {
                path.push_str(&format!("{{{}}}", variable.field));
                index = variable.end.max(index + 1);
                continue;
            }
            match &self.segments[index] {
                Segment::Literal(literal) => path.push_str(literal),
                Segment::Any => path.push('*'),
                Segment::Rest => path.push_str("**"),
            }
            index += 1;
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }

    /// The request fields the path binds, in template order.
    pub fn variable_fields(&self) -> Vec<&str> {
        self.variables
            .iter()
            .map(|variable| variable.field.as_str())
            .collect()
    }

    /// Literal segments first, so specific routes win over variables; a `**` route last.
    fn specificity(&self) -> (bool, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|segment| matches!(segment, Segment::Literal(_)))
            .count();
        let rest = self.segments.last() == Some(&Segment::Rest);
        (!rest, literals, self.verb.is_some())
    }
}

/// The path and its custom verb: a `:` after the last `/`, outside braces.
fn split_verb(path: &str) -> (&str, Option<&str>) {
    let mut depth = 0_usize;
    let (mut last_slash, mut last_colon) = (None, None);
    for (index, ch) in path.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => last_slash = Some(index),
            ':' if depth == 0 => last_colon = Some(index),
            _ => {}
        }
    }
    match last_colon {
        Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
            (&path[..colon], Some(&path[colon + 1..]))
        }
        _ => (path, None),
    }
}

/// `text` split at `separator` where it is not inside braces.
fn split_outside_braces(text: &str, separator: char) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut depth, mut start) = (0_usize, 0);
    for (index, ch) in text.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ch if ch == separator && depth == 0 => {
                pieces.push(&text[start..index]);
                start = index + ch.len_utf8();
            }
            _ => {}
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// A segment outside a variable's braces: a literal, `*` or `**`.
fn plain_segment(text: &str) -> Option<Segment> {
    match text {
        "*" => Some(Segment::Any),
        "**" => Some(Segment::Rest),
        "" => None,
        literal if literal.contains(['{', '}', '*', '=']) => None,
        literal => Some(Segment::Literal(literal.to_owned())),
    }
}

/// Whether `message` has the (dotted) field path `path`, by proto field names.
fn has_field_path(message: &MessageDescriptor, path: &str) -> bool {
    let mut message = message.clone();
    let mut names = path.split('.').peekable();
    while let Some(name) = names.next() {
        let Some(field) = message.get_field_by_name(name) else {
            return false;
        };
        if names.peek().is_some() {
            let Kind::Message(inner) = field.kind() else {
                return false;
            };
            message = inner;
        }
    }
    true
}

/// A path segment percent-decoded; `keep_slash` leaves `%2F` as it is (multi-segment variables).
fn percent_decode(part: &str, keep_slash: bool) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = part.get(index + 1..index + 3)?;
            if !hex.bytes().all(|digit| digit.is_ascii_hexdigit()) {
                return None;
            }
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if keep_slash && byte == b'/' {
                out.extend_from_slice(&bytes[index..index + 3]);
            } else {
                out.push(byte);
            }
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every binding of every annotated RPC of `pool` (additional bindings included), most specific
/// templates first.
pub fn from_pool(pool: &DescriptorPool) -> Result<Vec<Route>, TemplateError> {
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&http).into_owned() else {
                continue;
            };
            routes.push(binding(&rule, &method)?);
            if let Some(Value::List(more)) =
                rule.get_field_by_name("additional_bindings").as_deref()
            {
                for extra in more {
                    if let Value::Message(extra) = extra {
                        routes.push(binding(extra, &method)?);
                    }
                }
            }
        }
    }
    routes.sort_by_key(|route| std::cmp::Reverse(route.specificity()));
    Ok(routes)
}

/// The route of one `google.api.HttpRule`: its pattern (`get` … `delete`, or `custom`), `body`
/// and `response_body`.
fn binding(rule: &DynamicMessage, method: &MethodDescriptor) -> Result<Route, TemplateError> {
    let text =
        |message: &DynamicMessage, name: &str| match message.get_field_by_name(name).as_deref() {
            Some(Value::String(value)) => value.clone(),
            _ => String::new(),
        };
    let standard = [
        ("get", http::Method::GET),
        ("post", http::Method::POST),
        ("put", http::Method::PUT),
        ("patch", http::Method::PATCH),
        ("delete", http::Method::DELETE),
    ]
    .into_iter()
    .find_map(|(name, http_method)| {
        let template = text(rule, name);
        (!template.is_empty()).then_some((http_method, template))
    });
    let custom = || match rule.get_field_by_name("custom").as_deref() {
        Some(Value::Message(custom)) => {
            let http_method = http::Method::from_bytes(text(custom, "kind").as_bytes()).ok()?;
            let template = text(custom, "path");
            (!template.is_empty()).then_some((http_method, template))
        }
        _ => None,
    };
    let Some((http_method, template)) = standard.or_else(custom) else {
        return Err(TemplateError {
            template: String::new(),
            method: method.full_name().to_owned(),
            problem: "no pattern (get, post, put, patch, delete or custom)".to_owned(),
        });
    };
    Route::parse(
        http_method,
        &template,
        text(rule, "body"),
        text(rule, "response_body"),
        method.clone(),
    )
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn routes() -> Vec<Route> {
        from_pool(&DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap()).unwrap()
    }

    fn resolve(method: http::Method, path: &str) -> Option<(String, Vec<(String, String)>)> {
        routes().into_iter().find_map(|route| {
            (route.http_method == method)
                .then(|| route.matches(path))
                .flatten()
                .map(|variables| (route.method.name().to_owned(), variables))
        })
    }

    #[test]
    fn literal_segments_win_over_variables() {
        assert_eq!(
            resolve(http::Method::GET, "/v1/users/me").unwrap().0,
            "GetMe"
        );
        let (name, variables) = resolve(http::Method::GET, "/v1/users/0193").unwrap();
        assert_eq!(name, "GetUser");
        assert_eq!(variables, vec![("user_id".to_owned(), "0193".to_owned())]);
    }

    #[test]
    fn custom_verbs_and_variables_combine() {
        let (name, variables) =
            resolve(http::Method::POST, "/v1/quotas/api.calls:consume").unwrap();
        assert_eq!(name, "Consume");
        assert_eq!(
            variables,
            vec![("metric".to_owned(), "api.calls".to_owned())]
        );
        assert_eq!(
            resolve(http::Method::POST, "/v1/subscriptions/current:cancel")
                .unwrap()
                .0,
            "CancelSubscription"
        );
        assert!(resolve(http::Method::POST, "/v1/quotas/x:unknown-verb").is_none());
    }

    #[test]
    fn the_well_known_jwks_path_is_routed() {
        assert_eq!(
            resolve(http::Method::GET, "/.well-known/jwks.json")
                .unwrap()
                .0,
            "GetJwks"
        );
    }

    #[test]
    fn variables_are_percent_decoded_and_never_empty() {
        let (_, variables) = resolve(http::Method::GET, "/v1/quotas/a%2Fb").unwrap();
        assert_eq!(variables[0].1, "a/b");
        assert!(resolve(http::Method::GET, "/v1/quotas/a%+Ab").is_none());
        assert!(resolve(http::Method::GET, "/v1/users/").is_none());
    }

    fn method(name: &str) -> MethodDescriptor {
        let pool = DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        pool.services()
            .find_map(|service| service.methods().find(|method| method.name() == name))
            .unwrap()
    }

    fn parse(template: &str, body: &str, response_body: &str) -> Result<Route, TemplateError> {
        Route::parse(
            http::Method::GET,
            template,
            body.to_owned(),
            response_body.to_owned(),
            method("GetPlan"),
        )
    }

    #[test]
    fn additional_bindings_are_routes_of_their_own() {
        assert_eq!(
            resolve(http::Method::POST, "/v1/usage/u-1:refund").unwrap(),
            (
                "Refund".to_owned(),
                vec![("usage_id".to_owned(), "u-1".to_owned())]
            )
        );
        assert_eq!(
            resolve(http::Method::POST, "/v1/usage:refund").unwrap(),
            ("Refund".to_owned(), vec![])
        );
    }

    #[test]
    fn sub_templates_bind_the_segments_they_span() {
        let route = parse("/v1/{plan_code=plans/*}:check", "", "").unwrap();
        assert_eq!(
            route.matches("/v1/plans/pro:check").unwrap(),
            vec![("plan_code".to_owned(), "plans/pro".to_owned())]
        );
        assert!(route.matches("/v1/other/pro:check").is_none());
        assert!(route.matches("/v1/plans/pro/x:check").is_none());
        assert_eq!(route.openapi_path(), "/v1/{plan_code}:check");
        assert_eq!(route.variable_fields(), vec!["plan_code"]);
    }

    #[test]
    fn a_trailing_double_wildcard_takes_the_rest_and_keeps_encoded_slashes() {
        let route = parse("/v1/*/{plan_code=files/**}", "", "").unwrap();
        assert_eq!(
            route.matches("/v1/any/files/a/b%2Fc").unwrap(),
            vec![("plan_code".to_owned(), "files/a/b%2Fc".to_owned())]
        );
        assert!(route.matches("/v1/any/files").is_none());
        // One segment or several, an encoded slash in a `**` value stays encoded.
        let single = parse("/v1/{plan_code=**}", "", "").unwrap();
        assert_eq!(single.matches("/v1/a%2Fb").unwrap()[0].1, "a%2Fb");
        assert!(route.matches("/v1//files/a").is_none());
        assert!(parse("/v1/**/x", "", "").is_err());
    }

    #[test]
    fn rules_naming_unknown_fields_are_refused_at_start() {
        assert!(parse("/v1/{nope}", "", "").is_err());
        assert!(parse("/v1/{plan_code}", "nope", "").is_err());
        assert!(parse("/v1/{plan_code}", "", "nope").is_err());
        assert!(parse("/v1/{plan_code}", "", "plan").is_ok());
        assert!(parse("/v1/{plan_code}", "", "plan.plan_code").is_err());
        assert!(parse("/v1/{plan_code}/{plan_code}", "", "").is_err());
        assert!(parse("v1/{plan_code}", "", "").is_err());
    }
}
