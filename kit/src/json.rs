//! `google.protobuf.Struct` ⇄ JSON, for free-form attributes and details kept as `jsonb`.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

/// The JSON object of a Struct.
pub fn from_struct(value: &Struct) -> Json {
    Json::Object(
        value
            .fields
            .iter()
            .map(|(key, value)| (key.clone(), from_value(value)))
            .collect::<Map<_, _>>(),
    )
}

fn from_value(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::NumberValue(n)) => Number::from_f64(*n).map_or(Json::Null, Json::Number),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StructValue(s)) => from_struct(s),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(from_value).collect()),
    }
}

/// The Struct of a JSON object; `None` for anything else.
pub fn to_struct(json: Json) -> Option<Struct> {
    match json {
        Json::Object(fields) => Some(Struct {
            fields: fields
                .into_iter()
                .map(|(key, value)| (key, to_value(value)))
                .collect(),
        }),
        _ => None,
    }
}

fn to_value(json: Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(values) => Kind::ListValue(ListValue {
            values: values.into_iter().map(to_value).collect(),
        }),
        object @ Json::Object(_) => match to_struct(object) {
            Some(s) => Kind::StructValue(s),
            None => Kind::NullValue(0),
        },
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn round_trips() {
        let json: Json =
            serde_json::from_str(r#"{"a":1.5,"b":[true,null,"x"],"c":{"d":"e"}}"#).unwrap();
        assert_eq!(from_struct(&to_struct(json.clone()).unwrap()), json);
        assert_eq!(
            to_struct(Json::Array(vec![])),
            None,
            "only objects are Structs"
        );
    }
}
