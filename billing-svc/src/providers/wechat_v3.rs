//! WeChat Pay API v3's protocol rules as pure functions, shared by the provider
//! ([`super::wechat`]) and the simulator, which plays WeChat Pay's side:
//! - every request carries `Authorization: WECHATPAY2-SHA256-RSA2048 mchid=…,nonce_str=…,
//!   timestamp=…,serial_no=…,signature=…`, SHA256withRSA by the merchant key over
//!   [`request_message`];
//! - every answer and notification is signed by the platform key named in `Wechatpay-Serial`
//!   over [`response_message`];
//! - a notification's `resource` is AEAD_AES_256_GCM under the APIv3 key ([`decrypt_resource`]).

use std::fmt;

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload, consts::U12},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use rand::{Rng, distributions::Alphanumeric};

use crate::providers::alipay::BEIJING;

/// WeChat Pay's production API host, the SDKs' default.
pub const PRODUCTION_BASE_URL: &str = "https://api.mch.weixin.qq.com";

/// The scheme of the `Authorization` header, and the value of `Wechatpay-Signature-Type`.
pub const AUTH_SCHEME: &str = "WECHATPAY2-SHA256-RSA2048";
/// The only `resource.algorithm` of API v3 notifications.
pub const RESOURCE_ALGORITHM: &str = "AEAD_AES_256_GCM";

pub const NATIVE_ORDER_PATH: &str = "/v3/pay/transactions/native";
/// Followed by `{out_trade_no}` (query) or `{out_trade_no}/close`.
pub const OUT_TRADE_NO_PATH: &str = "/v3/pay/transactions/out-trade-no/";
pub const REFUNDS_PATH: &str = "/v3/refund/domestic/refunds";

/// The answer headers that carry the platform's signature.
pub const HEADER_TIMESTAMP: &str = "wechatpay-timestamp";
pub const HEADER_NONCE: &str = "wechatpay-nonce";
pub const HEADER_SIGNATURE: &str = "wechatpay-signature";
pub const HEADER_SERIAL: &str = "wechatpay-serial";

/// `code` of a query or close for an order WeChat Pay does not know.
pub const ORDER_NOT_EXIST: &str = "ORDER_NOT_EXIST";
/// `code` of closing an order closed already.
pub const ORDER_CLOSED: &str = "ORDER_CLOSED";
/// `code` of a request whose signature does not verify.
pub const SIGN_ERROR: &str = "SIGN_ERROR";

/// A notification whose timestamp is this far from now, either way, is refused (WeChat's rule).
pub const MAX_NOTIFICATION_SKEW: TimeDelta = TimeDelta::minutes(5);

/// The AES-GCM nonce WeChat Pay uses: 12 characters, used as 12 bytes.
const RESOURCE_NONCE_BYTES: usize = 12;

/// The APIv3 key: 32 bytes (set as 32 characters in the merchant platform) that encrypt
/// notification resources. `Debug` prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiV3Key([u8; 32]);

impl fmt::Debug for ApiV3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiV3Key(***)")
    }
}

/// Why an APIv3 key was refused; never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the APIv3 key must be exactly 32 bytes, not {0}")]
pub struct ApiV3KeyLength(pub usize);

impl ApiV3Key {
    /// The key as the merchant platform shows it: its 32 characters are the key's bytes.
    /// Surrounding whitespace (a file's final newline) is not part of it.
    pub fn from_text(text: &str) -> Result<Self, ApiV3KeyLength> {
        let bytes = text.trim().as_bytes();
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| ApiV3KeyLength(bytes.len()))
    }

    /// A random key of 32 letters and digits, as the merchant platform accepts (development).
    pub fn generate() -> Self {
        let mut key = [0_u8; 32];
        for (byte, random) in key
            .iter_mut()
            .zip(rand::thread_rng().sample_iter(Alphanumeric))
        {
            *byte = random;
        }
        Self(key)
    }

    /// The key's text, to write it to a development file.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The fields of an `Authorization: WECHATPAY2-SHA256-RSA2048 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub mchid: String,
    pub nonce_str: String,
    pub timestamp: String,
    pub serial_no: String,
    pub signature: String,
}

impl Authorization {
    /// The header value, fields in the order WeChat Pay's SDKs write them.
    pub fn header_value(&self) -> String {
        format!(
            "{AUTH_SCHEME} mchid=\"{}\",nonce_str=\"{}\",timestamp=\"{}\",serial_no=\"{}\",signature=\"{}\"",
            self.mchid, self.nonce_str, self.timestamp, self.serial_no, self.signature
        )
    }

    /// Parses a header value; `None` unless the scheme is ours and all five fields are present
    /// once each.
    pub fn parse(value: &str) -> Option<Self> {
        let fields = value.strip_prefix(AUTH_SCHEME)?.strip_prefix(' ')?;
        let (mut mchid, mut nonce_str, mut timestamp, mut serial_no, mut signature) =
            (None, None, None, None, None);
        for field in fields.split(',') {
            let (name, quoted) = field.trim().split_once('=')?;
            let value = quoted.strip_prefix('"')?.strip_suffix('"')?.to_owned();
            let slot = match name {
                "mchid" => &mut mchid,
                "nonce_str" => &mut nonce_str,
                "timestamp" => &mut timestamp,
                "serial_no" => &mut serial_no,
                "signature" => &mut signature,
                _ => return None,
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        Some(Self {
            mchid: mchid?,
            nonce_str: nonce_str?,
            timestamp: timestamp?,
            serial_no: serial_no?,
            signature: signature?,
        })
    }
}

/// What a request signature covers: `METHOD\nURL\ntimestamp\nnonce\nbody\n`, where URL is the
/// path with its query string and body is empty for GET.
pub fn request_message(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &str,
) -> String {
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{body}\n")
}

/// What an answer's or a notification's signature covers: `timestamp\nnonce\nbody\n`.
pub fn response_message(timestamp: &str, nonce: &str, body: &str) -> String {
    format!("{timestamp}\n{nonce}\n{body}\n")
}

/// A random nonce of `len` letters and digits (32 for signatures, 12 for resources).
pub fn new_nonce(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Why a notification resource could not be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("ciphertext is not base64")]
    NotBase64,
    #[error("nonce is not {RESOURCE_NONCE_BYTES} bytes")]
    BadNonce,
    /// The GCM tag does not verify: not encrypted with our APIv3 key, or altered.
    #[error("ciphertext does not authenticate under the APIv3 key")]
    Unauthenticated,
}

/// Decrypts a notification `resource`: AES-256-GCM, key = the APIv3 key, nonce = the `nonce`
/// string's bytes, AAD = `associated_data`, input = the base64-decoded `ciphertext` (with its
/// 16-byte tag at the end).
pub fn decrypt_resource(
    key: &ApiV3Key,
    nonce: &str,
    associated_data: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, ResourceError> {
    let ciphertext = STANDARD
        .decode(ciphertext_b64)
        .map_err(|_| ResourceError::NotBase64)?;
    let nonce = resource_nonce(nonce)?;
    Aes256Gcm::new(&key.0.into())
        .decrypt(
            &nonce,
            Payload {
                msg: &ciphertext,
                aad: associated_data.as_bytes(),
            },
        )
        .map_err(|_| ResourceError::Unauthenticated)
}

/// Encrypts a resource as WeChat Pay does (the simulator's side of [`decrypt_resource`]).
pub fn encrypt_resource(
    key: &ApiV3Key,
    nonce: &str,
    associated_data: &str,
    plaintext: &[u8],
) -> Result<String, ResourceError> {
    let nonce = resource_nonce(nonce)?;
    let ciphertext = Aes256Gcm::new(&key.0.into())
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: associated_data.as_bytes(),
            },
        )
        // Only inputs past AES-GCM's 64 GiB limit fail.
        .map_err(|_| ResourceError::Unauthenticated)?;
    Ok(STANDARD.encode(ciphertext))
}

fn resource_nonce(nonce: &str) -> Result<Nonce<U12>, ResourceError> {
    <[u8; RESOURCE_NONCE_BYTES]>::try_from(nonce.as_bytes())
        .map(Nonce::from)
        .map_err(|_| ResourceError::BadNonce)
}

/// Formats a time as WeChat Pay writes them: RFC 3339 in Beijing time, e.g.
/// `2025-01-02T11:04:05+08:00`.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.with_timezone(&BEIJING)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}
