//! The REST routes, read from the contracts' `google.api.http` annotations, and path matching.
//!
//! Templates follow google.api.http: `/v1/users/{user_id}`, `/v1/quotas/{metric}:consume`. A
//! literal segment beats a variable (`/v1/users/me` before `/v1/users/{user_id}`).

use prost_reflect::{DescriptorPool, MethodDescriptor, Value};

/// One part of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// A single-segment variable bound to a (possibly dotted) request field.
    Variable(String),
}

/// A route's path variables as matched: (field path, percent-decoded value), in template order.
pub type PathVariables = Vec<(String, String)>;

/// A REST route of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: http::Method,
    segments: Vec<Segment>,
    /// The custom verb after the last segment (`cancel` in `current:cancel`).
    verb: Option<String>,
    /// The path template as annotated.
    pub template: String,
    /// `*` (the whole JSON body is the request), a field name, or empty (no body).
    pub body: String,
    /// The response field that is the HTTP body, or empty (the whole response).
    pub response_body: String,
    pub method: MethodDescriptor,
}

/// Why a template could not be used.
#[derive(Debug, thiserror::Error)]
#[error("bad http template {template:?} on {method}: {problem}")]
pub struct TemplateError {
    template: String,
    method: String,
    problem: &'static str,
}

impl Route {
    fn parse(
        http_method: http::Method,
        template: &str,
        body: String,
        method: MethodDescriptor,
    ) -> Result<Self, TemplateError> {
        let fail = |problem| TemplateError {
            template: template.to_owned(),
            method: method.full_name().to_owned(),
            problem,
        };
        let path = template
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with /"))?;
        // A verb is a `:` outside braces in the last segment.
        let (path, verb) = match path.rfind(':') {
            Some(colon) if !path[colon..].contains('}') && !path[colon..].contains('/') => {
                (&path[..colon], Some(path[colon + 1..].to_owned()))
            }
            _ => (path, None),
        };
        let segments = path
            .split('/')
            .map(|segment| {
                match segment
                    .strip_prefix('{')
                    .and_then(|rest| rest.strip_suffix('}'))
                {
                    Some(variable) if variable.contains('=') => {
                        Err(fail("variables with sub-templates are not supported"))
                    }
                    Some(variable) if !variable.is_empty() => {
                        Ok(Segment::Variable(variable.to_owned()))
                    }
                    Some(_) => Err(fail("empty variable")),
                    None if segment.contains(['{', '}', '*']) => {
                        Err(fail("wildcards are not supported"))
                    }
                    None => Ok(Segment::Literal(segment.to_owned())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            http_method,
            segments,
            verb,
            template: template.to_owned(),
            body,
            response_body: String::new(),
            method,
        })
    }

    /// The template in OpenAPI form: each variable as `{field.path}`, the custom verb kept.
    pub fn openapi_path(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(literal) => path.push_str(&format!("/{literal}")),
                Segment::Variable(field) => path.push_str(&format!("/{{{field}}}")),
            }
        }
        if let Some(verb) = &self.verb {
            path.push_str(&format!(":{verb}"));
        }
        path
    }

    /// The request fields bound by the path, in template order.
    pub fn variable_fields(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|segment| match segment {
                Segment::Variable(field) => Some(field.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// The path variables if `path` matches this route's template.
    pub fn matches(&self, path: &str) -> Option<PathVariables> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut variables = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(_) if part.is_empty() => return None,
                Segment::Variable(field) => {
                    let value = percent_decode(part)?;
                    variables.push((field.clone(), value));
                }
            }
        }
        Some(variables)
    }

    /// Literal segments first, so specific routes win over variables.
    fn specificity(&self) -> (usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|segment| matches!(segment, Segment::Literal(_)))
            .count();
        (literals, self.verb.is_some())
    }
}

fn percent_decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = part.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every annotated RPC of `pool`, most specific templates first.
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
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(more)) =
                rule.get_field_by_name("additional_bindings").as_deref()
            {
                rules.extend(more.iter().filter_map(|value| value.as_message().cloned()));
            }
            for rule in rules {
                let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
                    Some(Value::String(value)) if !value.is_empty() => Some(value.clone()),
                    _ => None,
                };
                let body = text("body").unwrap_or_default();
                for (name, http_method) in [
                    ("get", http::Method::GET),
                    ("post", http::Method::POST),
                    ("put", http::Method::PUT),
                    ("patch", http::Method::PATCH),
                    ("delete", http::Method::DELETE),
                ] {
                    if let Some(template) = text(name) {
                        let mut route =
                            Route::parse(http_method, &template, body.clone(), method.clone())?;
                        route.response_body = text("response_body").unwrap_or_default();
                        routes.push(route);
                    }
                }
            }
        }
    }
    routes.sort_by_key(|route| std::cmp::Reverse(route.specificity()));
    Ok(routes)
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
        assert!(resolve(http::Method::GET, "/v1/users/").is_none());
    }
}
