//! JSON ⇄ protobuf for one call: the request message is assembled from the JSON body, the path
//! variables and the query string (proto3 JSON rules, unknown fields refused), and the response is
//! written as proto3 JSON (or raw bytes for `google.api.HttpBody`). gRPC status codes map to HTTP
//! statuses as in Google's API design guide.

use base64::{Engine, engine::general_purpose::STANDARD};
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value,
};
use serde_json::{Map, Value as Json};

use crate::routes::{PathVariables, Route};

const HTTP_BODY: &str = "google.api.HttpBody";

/// A request the client got wrong: HTTP 400 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Builds the RPC's request message.
pub fn request_message(
    route: &Route,
    variables: PathVariables,
    query: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, BadRequest> {
    let input = route.method.input();
    let mut object = Map::new();
    match route.body.as_str() {
        "" => {}
        "*" => {
            if let Json::Object(fields) = parse_body(body)? {
                object = fields;
            } else {
                return Err(BadRequest(
                    "the request body must be a JSON object".to_owned(),
                ));
            }
        }
        field_name => {
            let field = input
                .get_field_by_name(field_name)
                .ok_or_else(|| BadRequest(format!("unknown body field {field_name}")))?;
            let value = match field.kind() {
                Kind::Message(message) if message.full_name() == HTTP_BODY => serde_json::json!({
                    "contentType": content_type.unwrap_or("application/octet-stream"),
                    "data": STANDARD.encode(body),
                }),
                _ => parse_body(body)?,
            };
            object.insert(field.json_name().to_owned(), value);
        }
    }
    // Query parameters bind the fields the body does not (none when the body is `*`).
    if route.body != "*" {
        for (name, raw) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            insert_text(&input, &mut object, &name, &raw, true)?;
        }
    }
    for (name, raw) in variables {
        insert_text(&input, &mut object, &name, &raw, false)?;
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(input, Json::Object(object), &options)
        .map_err(|err| BadRequest(format!("invalid request: {err}")))
}

fn parse_body(body: &[u8]) -> Result<Json, BadRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Json::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|err| BadRequest(format!("the request body is not valid JSON: {err}")))
}

/// Sets the (possibly dotted) field `path` from its text form, typed by the field's kind.
fn insert_text(
    message: &MessageDescriptor,
    object: &mut Map<String, Json>,
    path: &str,
    raw: &str,
    repeatable: bool,
) -> Result<(), BadRequest> {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let field = field_named(message, head)
        .ok_or_else(|| BadRequest(format!("unknown parameter {path}")))?;
    let key = field.json_name().to_owned();
    match (rest, field.kind()) {
        (Some(rest), Kind::Message(inner)) if !is_well_known(&inner) => {
            let entry = object
                .entry(key)
                .or_insert_with(|| Json::Object(Map::new()));
            let Json::Object(nested) = entry else {
                return Err(BadRequest(format!(
                    "parameter {path} conflicts with the body"
                )));
            };
            insert_text(&inner, nested, rest, raw, repeatable)
        }
        (Some(_), _) => Err(BadRequest(format!("unknown parameter {path}"))),
        (None, kind) => {
            let value = typed(&field, &kind, raw)?;
            if field.is_list() && repeatable {
                match object.entry(key).or_insert_with(|| Json::Array(Vec::new())) {
                    Json::Array(values) => values.push(value),
                    _ => {
                        return Err(BadRequest(format!(
                            "parameter {path} conflicts with the body"
                        )));
                    }
                }
            } else {
                object.insert(key, value);
            }
            Ok(())
        }
    }
}

fn field_named(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_name(name)
        .or_else(|| message.get_field_by_json_name(name))
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

/// Text from a URL as the JSON value proto3 JSON expects: booleans as literals, everything else
/// (numbers, enums by name, timestamps, field masks) as strings, which proto3 JSON accepts.
fn typed(field: &FieldDescriptor, kind: &Kind, raw: &str) -> Result<Json, BadRequest> {
    match kind {
        Kind::Bool => match raw {
            "true" => Ok(Json::Bool(true)),
            "false" => Ok(Json::Bool(false)),
            _ => Err(BadRequest(format!(
                "{}: expected true or false",
                field.name()
            ))),
        },
        _ => Ok(Json::String(raw.to_owned())),
    }
}

/// The response body and its content type: the whole message, or only its `response_body` field
/// when the route names one.
pub fn response_body(
    message: &DynamicMessage,
    response_body: &str,
) -> Result<(String, Vec<u8>), serde_json::Error> {
    if message.descriptor().full_name() == HTTP_BODY {
        let text = |name: &str| match message.get_field_by_name(name).as_deref() {
            Some(Value::String(value)) => value.clone(),
            _ => String::new(),
        };
        let data = match message.get_field_by_name("data").as_deref() {
            Some(Value::Bytes(bytes)) => bytes.to_vec(),
            _ => Vec::new(),
        };
        let content_type = Some(text("content_type")).filter(|value| !value.is_empty());
        return Ok((
            content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
            data,
        ));
    }
    // Defaults are written out: `"allowed": false` must be visible to a browser.
    let options = SerializeOptions::new().skip_default_fields(false);
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message.serialize_with_options(&mut serializer, &options)?;
    let whole = serializer.into_inner();
    let field = message.descriptor().get_field_by_name(response_body);
    let Some(field) = field else {
        return Ok(("application/json".to_owned(), whole));
    };
    // The routes were checked at start, so the field exists; proto3 JSON names it by json_name.
    let mut object: Map<String, Json> = serde_json::from_slice(&whole)?;
    let value = object.remove(field.json_name()).unwrap_or(Json::Null);
    Ok(("application/json".to_owned(), serde_json::to_vec(&value)?))
}

/// The HTTP status for a gRPC code (google.rpc.Code mapping).
pub fn http_status(code: tonic::Code) -> http::StatusCode {
    use http::StatusCode as Http;
    use tonic::Code;
    match code {
        Code::Ok => Http::OK,
        Code::Cancelled => Http::from_u16(499).unwrap_or(Http::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => Http::BAD_REQUEST,
        Code::DeadlineExceeded => Http::GATEWAY_TIMEOUT,
        Code::NotFound => Http::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => Http::CONFLICT,
        Code::PermissionDenied => Http::FORBIDDEN,
        Code::Unauthenticated => Http::UNAUTHORIZED,
        Code::ResourceExhausted => Http::TOO_MANY_REQUESTS,
        Code::Unimplemented => Http::NOT_IMPLEMENTED,
        Code::Unavailable => Http::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => Http::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON error body: `{"code": 3, "status": "INVALID_ARGUMENT", "message": "..."}`.
pub fn error_body(code: tonic::Code, message: &str) -> Vec<u8> {
    let status = format!("{code:?}");
    let mut name = String::new();
    for (index, ch) in status.chars().enumerate() {
        if ch.is_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(ch.to_ascii_uppercase());
    }
    serde_json::json!({ "code": code as i32, "status": name, "message": message })
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn errors_use_google_status_names() {
        let body: Json =
            serde_json::from_slice(&error_body(tonic::Code::InvalidArgument, "email: empty"))
                .unwrap();
        assert_eq!(body["status"], "INVALID_ARGUMENT");
        assert_eq!(body["code"], 3);
        assert_eq!(
            http_status(tonic::Code::ResourceExhausted),
            http::StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http_status(tonic::Code::Unauthenticated),
            http::StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_response_body_field_is_the_whole_http_body() {
        let pool = prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let descriptor = pool
            .get_message_by_name("commerce.billing.v1.GetPlanResponse")
            .unwrap();
        let reply = DynamicMessage::deserialize(
            descriptor,
            serde_json::json!({"plan": {"planCode": "pro", "priceAmountMinor": "900"}}),
        )
        .unwrap();

        let (_, whole) = response_body(&reply, "").unwrap();
        let whole: Json = serde_json::from_slice(&whole).unwrap();
        assert_eq!(whole["plan"]["planCode"], "pro");

        let (content_type, plan) = response_body(&reply, "plan").unwrap();
        let plan: Json = serde_json::from_slice(&plan).unwrap();
        assert_eq!(content_type, "application/json");
        assert_eq!(plan["planCode"], "pro");
        assert_eq!(plan["priceAmountMinor"], "900");
    }

    /// `t.Req { repeated string ids = 1; t.Inner page = 2; repeated int64 nums = 3; bool flag = 4 }`
    /// and `t.Inner { int32 size = 1 }`: the query shapes no contract has yet.
    fn query_message() -> MessageDescriptor {
        use prost_reflect::prost_types::{
            DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet,
            field_descriptor_proto::{Label, Type},
        };
        let field = |name: &str, number, label: Label, kind: Type, type_name: Option<&str>| {
            FieldDescriptorProto {
                name: Some(name.to_owned()),
                json_name: Some(name.to_owned()),
                number: Some(number),
                label: Some(label as i32),
                r#type: Some(kind as i32),
                type_name: type_name.map(str::to_owned),
                ..FieldDescriptorProto::default()
            }
        };
        let file = FileDescriptorProto {
            name: Some("t.proto".to_owned()),
            package: Some("t".to_owned()),
            syntax: Some("proto3".to_owned()),
            message_type: vec![
                DescriptorProto {
                    name: Some("Inner".to_owned()),
                    field: vec![field("size", 1, Label::Optional, Type::Int32, None)],
                    ..DescriptorProto::default()
                },
                DescriptorProto {
                    name: Some("Req".to_owned()),
                    field: vec![
                        field("ids", 1, Label::Repeated, Type::String, None),
                        field("page", 2, Label::Optional, Type::Message, Some(".t.Inner")),
                        field("nums", 3, Label::Repeated, Type::Int64, None),
                        field("flag", 4, Label::Optional, Type::Bool, None),
                    ],
                    ..DescriptorProto::default()
                },
            ],
            ..FileDescriptorProto::default()
        };
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(FileDescriptorSet {
            file: vec![file],
        })
        .unwrap();
        pool.get_message_by_name("t.Req").unwrap()
    }

    fn from_query(query: &str) -> Result<Json, BadRequest> {
        let message = query_message();
        let mut object = Map::new();
        for (name, raw) in form_urlencoded::parse(query.as_bytes()) {
            insert_text(&message, &mut object, &name, &raw, true)?;
        }
        let decoded = DynamicMessage::deserialize(message, Json::Object(object))
            .map_err(|err| BadRequest(err.to_string()))?;
        Ok(serde_json::to_value(&decoded).unwrap())
    }

    #[test]
    fn repeated_and_nested_query_parameters_fill_the_request() {
        let request = from_query("ids=a&ids=b&page.size=5&nums=1&nums=2&flag=true").unwrap();
        assert_eq!(
            request,
            serde_json::json!({
                "ids": ["a", "b"], "page": {"size": 5}, "nums": ["1", "2"], "flag": true
            })
        );
        assert!(from_query("page.nope=1").is_err());
        assert!(from_query("flag=yes").is_err());
        assert!(from_query("nums=x").is_err());
    }
}
