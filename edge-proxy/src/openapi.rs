//! `GET /openapi.json`: the OpenAPI 3.1 document of the edge's REST routes, generated at start
//! from the contracts' descriptors (routes, messages and their comments), so it describes exactly
//! what the edge transcodes. Schemas follow the proto3 JSON mapping the edge speaks: camelCase
//! names, 64-bit integers as strings, enums by name, well-known types in their JSON forms.
//!
//! Who may call an operation comes from the `Auth:` line of its RPC's comment: `none`, `bearer
//! token`, `API key`, or several joined by `,`/`or` (`Auth: bearer token or API key.`). An
//! annotated RPC without one stops the edge at start (and fails the tests), so the document
//! never guesses.

use std::collections::{BTreeMap, HashMap};

use axum::{
    http::header,
    routing::{MethodRouter, get},
};
use prost_reflect::{
    EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, MethodDescriptor,
};
use serde_json::{Map, Value as Json, json};

use crate::routes::Route;

const HTTP_BODY: &str = "google.api.HttpBody";
/// The component of the error body every non-2xx answer carries (`transcode::error_body`).
const ERROR_SCHEMA: &str = "Error";
/// The `syntax` statement of a file: the file header comment is detached before it.
const SYNTAX_PATH: [i32; 1] = [12];

/// An annotated RPC whose comment does not say who may call it.
#[derive(Debug, thiserror::Error)]
#[error("{rpc}: {problem} (expected a line like `Auth: bearer token or API key.`)")]
pub struct AuthLineError {
    rpc: String,
    problem: String,
}

/// `GET /openapi.json` for `routes`, the document rendered once.
pub fn serve<S: Clone + Send + Sync + 'static>(
    routes: &[Route],
) -> anyhow::Result<MethodRouter<S>> {
    let body = serde_json::to_vec(&document(routes)?)?;
    Ok(get(move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    }))
}

/// The OpenAPI document of `routes`.
pub fn document(routes: &[Route]) -> Result<Json, AuthLineError> {
    let mut components = Components::default();
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut tags: BTreeMap<String, Json> = BTreeMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for route in routes {
        let service = route.method.parent_service();
        // Additional bindings of one RPC get `_2`, `_3`…: operation ids must be unique.
        let id = format!("{}_{}", service.name(), route.method.name());
        let seen = ids.entry(id.clone()).or_default();
        *seen += 1;
        let id = match *seen {
            1 => id,
            n => format!("{id}_{n}"),
        };
        let operation = components.operation(route, id)?;
        paths
            .entry(route.openapi_path())
            .or_default()
            .insert(route.http_method.as_str().to_ascii_lowercase(), operation);
        tags.entry(service.name().to_owned()).or_insert_with(|| {
            let file = service.parent_file();
            let header = detached_comment(&file, &SYNTAX_PATH);
            let about = comment(&file, service.path());
            json!({ "name": service.name(), "description": join_paragraphs(&about, &header) })
        });
    }
    components
        .schemas
        .insert(ERROR_SCHEMA.to_owned(), error_schema());
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "commerce-mesh",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST/JSON API of commerce-mesh, served by edge-proxy and \
                transcoded to the services' gRPC contracts. Generated from those contracts: \
                bodies are their proto3 JSON form, and every failed call answers with the JSON \
                error body (`Error`) and the HTTP status of its gRPC code.",
        },
        "servers": [{ "url": "/" }],
        "tags": tags.into_values().collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "schemas": components.schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "A signed-in user's access token from Login or Refresh.",
                },
                "apiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "An API key (`cmk_…`) from CreateApiKey: it acts for its \
                        owner, limited to its scopes.",
                },
            },
        },
    }))
}

/// The body of every non-2xx answer, as `transcode::error_body` writes it.
fn error_schema() -> Json {
    json!({
        "type": "object",
        "description": "A failed call: the gRPC status the service (or the edge) answered.",
        "required": ["code", "status", "message"],
        "properties": {
            "code": { "type": "integer", "description": "The gRPC status code, e.g. 3." },
            "status": {
                "type": "string",
                "description": "The gRPC status name, e.g. `INVALID_ARGUMENT`.",
            },
            "message": { "type": "string", "description": "What went wrong, for people." },
        },
        "additionalProperties": false,
    })
}

/// `components/schemas`, filled as operations reference messages and enums.
#[derive(Default)]
struct Components {
    schemas: BTreeMap<String, Json>,
}

impl Components {
    fn operation(&mut self, route: &Route, id: String) -> Result<Json, AuthLineError> {
        let method = &route.method;
        let input = method.input();
        let text = comment(&method.parent_file(), method.path());
        let (summary, description) = split_summary(&text);
        let bound = route.variable_fields();
        let mut parameters = Vec::new();
        for field_path in &bound {
            if let Some(field) = field_at(&input, field_path) {
                let mut schema = self.field_schema(&field);
                // The edge never matches an empty segment.
                if schema["type"] == "string" {
                    schema["minLength"] = json!(1);
                }
                parameters.push(json!({
                    "name": field_path,
                    "in": "path",
                    "required": true,
                    "description": comment(&field.parent_file(), field.path()),
                    "schema": schema,
                }));
            }
        }
        let mut operation = json!({
            "operationId": id,
            "tags": [method.parent_service().name()],
            "summary": summary,
            "description": description,
            "security": security(method, &text)?,
        });
        match route.body.as_str() {
            "*" => {
                // Fields the path binds are not expected in the body.
                let top: Vec<&str> = bound
                    .iter()
                    .filter(|path| !path.contains('.'))
                    .copied()
                    .collect();
                let schema = if top.is_empty() {
                    self.message_ref(&input)
                } else {
                    self.message_schema(&input, &top)
                };
                operation["requestBody"] =
                    json!({ "content": { "application/json": { "schema": schema } } });
            }
            field_name => {
                let mut skip = bound.clone();
                if let Some(field) = input.get_field_by_name(field_name) {
                    skip.push(field_name);
                    operation["requestBody"] = self.body_of_field(&field);
                }
                self.query_parameters(&input, "", "", &skip, &mut Vec::new(), &mut parameters);
            }
        }
        if !parameters.is_empty() {
            operation["parameters"] = Json::Array(parameters);
        }
        operation["responses"] = json!({
            "200": self.success(route),
            "default": {
                "description": "The call failed: the HTTP status of the gRPC code (400 \
                    INVALID_ARGUMENT and FAILED_PRECONDITION, 401 UNAUTHENTICATED, 403 \
                    PERMISSION_DENIED, 404 NOT_FOUND, 409 ALREADY_EXISTS, 429 \
                    RESOURCE_EXHAUSTED, 503 UNAVAILABLE, …).",
                "content": { "application/json": { "schema": schema_ref(ERROR_SCHEMA) } },
            },
        });
        Ok(operation)
    }

    /// The request body when it is one field of the request: a raw body for `HttpBody`.
    fn body_of_field(&mut self, field: &FieldDescriptor) -> Json {
        match field.kind() {
            Kind::Message(message) if message.full_name() == HTTP_BODY => json!({
                "description": "The raw body, passed on unchanged with its Content-Type.",
                "content": { "*/*": {} },
            }),
            _ => {
                json!({ "content": { "application/json": { "schema": self.field_schema(field) } } })
            }
        }
    }

    /// The 200 answer: the response message (or its `response_body` field) as JSON, or the text
    /// of an `HttpBody`.
    fn success(&mut self, route: &Route) -> Json {
        let output = route.method.output();
        let description = comment(&output.parent_file(), output.path());
        let schema = match output.get_field_by_name(&route.response_body) {
            Some(field) => self.field_schema(&field),
            None if output.full_name() == HTTP_BODY => {
                return json!({
                    "description": "The raw body the service answers with.",
                    "content": { "text/plain": { "schema": { "type": "string" } } },
                });
            }
            None => self.message_ref(&output),
        };
        json!({
            "description": if description.is_empty() { "OK".to_owned() } else { description },
            "content": { "application/json": { "schema": schema } },
        })
    }

    /// Query parameters for the fields of `message` (below the field path `prefix`, named
    /// `json_prefix`) that neither the path nor the body binds: scalars, enums and their lists;
    /// nested messages as dotted names. Maps, lists of messages and JSON objects have no query form.
    fn query_parameters(
        &mut self,
        message: &MessageDescriptor,
        prefix: &str,
        json_prefix: &str,
        skip: &[&str],
        visiting: &mut Vec<String>,
        out: &mut Vec<Json>,
    ) {
        visiting.push(message.full_name().to_owned());
        for field in message.fields() {
            let path = format!("{prefix}{}", field.name());
            let name = format!("{json_prefix}{}", field.json_name());
            if skip.contains(&path.as_str()) || field.is_map() {
                continue;
            }
            match field.kind() {
                kind if has_query_form(&kind) => out.push(json!({
                    "name": name,
                    "in": "query",
                    "description": comment(&field.parent_file(), field.path()),
                    "schema": self.field_schema(&field),
                })),
                Kind::Message(nested)
                    if !field.is_list()
                        && well_known(&nested).is_none()
                        && !visiting.iter().any(|seen| seen == nested.full_name()) =>
                {
                    self.query_parameters(
                        &nested,
                        &format!("{path}."),
                        &format!("{name}."),
                        skip,
                        visiting,
                        out,
                    );
                }
                _ => {}
            }
        }
        visiting.pop();
    }

    /// A field's schema: its kind, as a list or a map when it is one, with its comment.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Json {
        let mut schema = match field.kind() {
            Kind::Message(entry) if field.is_map() => json!({
                "type": "object",
                "additionalProperties": self.kind_schema(&entry.map_entry_value_field().kind()),
            }),
            kind if field.is_list() => json!({ "type": "array", "items": self.kind_schema(&kind) }),
            kind => self.kind_schema(&kind),
        };
        let description = comment(&field.parent_file(), field.path());
        if !description.is_empty() {
            schema["description"] = Json::String(description);
        }
        schema
    }

    fn kind_schema(&mut self, kind: &Kind) -> Json {
        match kind {
            Kind::Message(message) => {
                well_known(message).unwrap_or_else(|| self.message_ref(message))
            }
            Kind::Enum(enumeration) => self.enum_ref(enumeration),
            scalar => scalar_schema(scalar),
        }
    }

    /// A `$ref` to the message's component, built on first use. The name is reserved before the
    /// fields are walked, so recursive messages end in a `$ref` instead of looping.
    fn message_ref(&mut self, message: &MessageDescriptor) -> Json {
        let name = message.full_name();
        if !self.schemas.contains_key(name) {
            self.schemas.insert(name.to_owned(), Json::Null);
            let schema = self.message_schema(message, &[]);
            self.schemas.insert(name.to_owned(), schema);
        }
        schema_ref(name)
    }

    /// An object with the message's fields but `without` (top-level field names).
    fn message_schema(&mut self, message: &MessageDescriptor, without: &[&str]) -> Json {
        let mut properties = Map::new();
        for field in message.fields() {
            if !without.contains(&field.name()) {
                properties.insert(field.json_name().to_owned(), self.field_schema(&field));
            }
        }
        let mut description = comment(&message.parent_file(), message.path());
        for oneof in message.oneofs().filter(|oneof| !oneof.is_synthetic()) {
            let members: Vec<String> = oneof
                .fields()
                .map(|field| format!("`{}`", field.json_name()))
                .collect();
            description = join_paragraphs(
                &description,
                &format!(
                    "At most one of {} is set (oneof `{}`).",
                    members.join(", "),
                    oneof.name()
                ),
            );
        }
        json!({
            "type": "object",
            "description": description,
            "properties": properties,
            "additionalProperties": false,
        })
    }

    /// A `$ref` to the enum's component: its value names, each value's comment in the description.
    fn enum_ref(&mut self, enumeration: &EnumDescriptor) -> Json {
        let name = enumeration.full_name();
        if !self.schemas.contains_key(name) {
            let file = enumeration.parent_file();
            let mut values = Vec::new();
            let mut listed = Vec::new();
            for value in enumeration.values() {
                values.push(value.name().to_owned());
                listed.push(format!(
                    "- `{}`: {}",
                    value.name(),
                    comment(&file, value.path()).replace('\n', " ")
                ));
            }
            let description =
                join_paragraphs(&comment(&file, enumeration.path()), &listed.join("\n"));
            self.schemas.insert(
                name.to_owned(),
                json!({ "type": "string", "enum": values, "description": description }),
            );
        }
        schema_ref(name)
    }
}

fn schema_ref(name: &str) -> Json {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A scalar in proto3 JSON: 64-bit integers are decimal strings, bytes are base64.
fn scalar_schema(kind: &Kind) -> Json {
    match kind {
        Kind::Double => json!({ "type": "number", "format": "double" }),
        Kind::Float => json!({ "type": "number", "format": "float" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({ "type": "integer", "format": "int32" })
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX })
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" })
        }
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "format": "byte", "contentEncoding": "base64" }),
        Kind::Message(_) | Kind::Enum(_) => json!({}),
    }
}

/// The JSON form of a well-known type, which proto3 JSON writes specially (not as an object of
/// its fields).
fn well_known(message: &MessageDescriptor) -> Option<Json> {
    let wrapped = |kind: Kind| Some(scalar_schema(&kind));
    match message.full_name() {
        "google.protobuf.Timestamp" => Some(json!({ "type": "string", "format": "date-time" })),
        "google.protobuf.Duration" => Some(json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "Seconds with an `s` suffix, e.g. `1.5s`.",
        })),
        "google.protobuf.FieldMask" => Some(json!({
            "type": "string",
            "description": "Comma-separated camelCase field paths, e.g. `name,priceAmountMinor`.",
        })),
        "google.protobuf.Struct" => Some(json!({ "type": "object", "additionalProperties": true })),
        "google.protobuf.Value" => Some(json!({})),
        "google.protobuf.ListValue" => Some(json!({ "type": "array", "items": {} })),
        "google.protobuf.NullValue" => Some(json!({ "type": "null" })),
        "google.protobuf.Empty" => Some(json!({ "type": "object", "additionalProperties": false })),
        "google.protobuf.Any" => Some(json!({
            "type": "object",
            "required": ["@type"],
            "properties": { "@type": { "type": "string" } },
            "additionalProperties": true,
        })),
        "google.protobuf.DoubleValue" => wrapped(Kind::Double),
        "google.protobuf.FloatValue" => wrapped(Kind::Float),
        "google.protobuf.Int64Value" => wrapped(Kind::Int64),
        "google.protobuf.UInt64Value" => wrapped(Kind::Uint64),
        "google.protobuf.Int32Value" => wrapped(Kind::Int32),
        "google.protobuf.UInt32Value" => wrapped(Kind::Uint32),
        "google.protobuf.BoolValue" => wrapped(Kind::Bool),
        "google.protobuf.StringValue" => wrapped(Kind::String),
        "google.protobuf.BytesValue" => wrapped(Kind::Bytes),
        _ => None,
    }
}

/// Whether a value of `kind` can be written in a URL: scalars, enums, and the well-known types
/// whose JSON form is a scalar (timestamps, durations, field masks, wrappers).
fn has_query_form(kind: &Kind) -> bool {
    match kind {
        Kind::Message(message) => well_known(message).is_some_and(|schema| {
            matches!(
                schema["type"].as_str(),
                Some("string" | "integer" | "number" | "boolean")
            )
        }),
        _ => true,
    }
}

/// The field at a dotted field path (`plan.plan_code`) below `message`.
fn field_at(message: &MessageDescriptor, path: &str) -> Option<FieldDescriptor> {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let field = message.get_field_by_name(head)?;
    match (rest, field.kind()) {
        (None, _) => Some(field),
        (Some(rest), Kind::Message(nested)) => field_at(&nested, rest),
        (Some(_), _) => None,
    }
}

/// The security requirements an RPC's `Auth:` line names.
fn security(method: &MethodDescriptor, text: &str) -> Result<Json, AuthLineError> {
    let fail = |problem: String| AuthLineError {
        rpc: method.full_name().to_owned(),
        problem,
    };
    let line = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Auth:"))
        .ok_or_else(|| fail("its comment has no `Auth:` line".to_owned()))?;
    let mut requirements = Vec::new();
    for credential in line
        .trim()
        .trim_end_matches('.')
        .split(" or ")
        .flat_map(|part| part.split(','))
    {
        requirements.push(match credential.trim() {
            "none" => json!({}),
            "bearer token" => json!({ "bearerAuth": [] }),
            "API key" => json!({ "apiKeyAuth": [] }),
            other => return Err(fail(format!("unknown credential {other:?}"))),
        });
    }
    // Anonymous alone is no security at all; beside others it makes them optional.
    if requirements == [json!({})] {
        requirements.clear();
    }
    Ok(Json::Array(requirements))
}

/// The leading comment of the element at `path` in `file`.
fn comment(file: &FileDescriptor, path: &[i32]) -> String {
    comments(file, path).0
}

/// The comments detached above the element at `path` (a file's header above `syntax`).
fn detached_comment(file: &FileDescriptor, path: &[i32]) -> String {
    comments(file, path).1
}

/// The leading and the detached comments of the element at `path`, without the `// ` margins.
fn comments(file: &FileDescriptor, path: &[i32]) -> (String, String) {
    let Some(location) = file
        .file_descriptor_proto()
        .source_code_info
        .as_ref()
        .and_then(|info| info.location.iter().find(|location| location.path == path))
    else {
        return Default::default();
    };
    let unmargined = |raw: &str| {
        raw.lines()
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_owned()
    };
    (
        unmargined(location.leading_comments()),
        unmargined(&location.leading_detached_comments.join("\n")),
    )
}

fn join_paragraphs(first: &str, second: &str) -> String {
    [first, second]
        .into_iter()
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The first sentence of a comment (on one line) and the rest.
fn split_summary(text: &str) -> (String, String) {
    let paragraph = text.split("\n\n").next().unwrap_or_default();
    let end = [". ", ".\n"]
        .into_iter()
        .filter_map(|stop| paragraph.find(stop))
        .min()
        .map_or(paragraph.len(), |stop| stop + 1);
    (
        paragraph[..end].replace('\n', " "),
        text[end..].trim().to_owned(),
    )
}
