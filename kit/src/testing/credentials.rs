//! Requests carrying a credential, the way a client sends it. One name per credential, the
//! credential first and the message last, in every crate's tests.

use tonic::Request;

/// `message` with `authorization: Bearer <token>` (an access token).
pub fn with_bearer<T>(token: &str, message: T) -> Request<T> {
    with_metadata("authorization", &format!("Bearer {token}"), message)
}

/// `message` with `x-api-key: <key>` (an API key or a service key).
pub fn with_api_key<T>(key: &str, message: T) -> Request<T> {
    with_metadata("x-api-key", key, message)
}

/// `message` with one metadata entry `name: value`.
///
/// # Panics
/// If `value` is not a valid metadata value (a test's own mistake).
pub fn with_metadata<T>(name: &'static str, value: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = value
        .parse()
        .unwrap_or_else(|err| panic!("metadata {name}: {value:?} is not a valid value: {err}"));
    request.metadata_mut().insert(name, value);
    request
}
