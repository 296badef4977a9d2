//! `AUTH_MASTER_KEY`: the AES-256-GCM key that seals signing keys at rest.

use std::str::FromStr;

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use rand::{RngCore, rngs::OsRng};

use crate::error::Error;

const NONCE_LEN: usize = 12;

/// 32 secret bytes, given as base64 (standard or URL-safe, padded or not) or as 64 hex digits.
/// `Debug` never shows them.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl FromStr for MasterKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).ok()
        } else {
            [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
        };
        let bytes = bytes.ok_or(
            "AUTH_MASTER_KEY must be 32 bytes in base64 or hex (e.g. `openssl rand -base64 32`)",
        )?;
        let key: [u8; 32] = bytes.try_into().map_err(|bytes: Vec<u8>| {
            format!(
                "AUTH_MASTER_KEY must be 32 bytes, got {} (e.g. `openssl rand -base64 32`)",
                bytes.len()
            )
        })?;
        Ok(Self(key))
    }
}

impl MasterKey {
    /// A key for one `purpose` (HKDF-SHA256), so the master key itself seals only signing keys
    /// and a key used elsewhere reveals nothing about it.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut key = [0_u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 blocks, so expanding cannot fail.
        let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0).expand(purpose.as_bytes(), &mut key);
        key
    }
}

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("encrypting a signing key failed")]
    Encrypt,
    /// Wrong master key, or the bytes were altered.
    #[error("cannot decrypt a sealed signing key: wrong AUTH_MASTER_KEY or altered data")]
    Decrypt,
}

/// A key that cannot be sealed or opened (e.g. a wrong `AUTH_MASTER_KEY`) is a server fault:
/// logged, never shown to callers.
impl From<SealError> for Error {
    fn from(err: SealError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl MasterKey {
    /// Encrypts `secret` bound to `context` (which must be given again to open it): a random
    /// nonce followed by the ciphertext and tag.
    pub fn seal(&self, secret: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0_u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new(&self.0.into());
        let payload = Payload {
            msg: secret,
            aad: context,
        };
        let ciphertext = cipher
            .encrypt(&Nonce::from(nonce), payload)
            .map_err(|_| SealError::Encrypt)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Decrypts what [`MasterKey::seal`] produced with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        let (nonce, ciphertext) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or(SealError::Decrypt)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Decrypt)?;
        Aes256Gcm::new(&self.0.into())
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| SealError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn parses_base64_and_hex_and_refuses_other_lengths() {
        let bytes = [7_u8; 32];
        for text in [
            STANDARD.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
            hex::encode(bytes),
        ] {
            assert_eq!(text.parse::<MasterKey>().unwrap().0, bytes, "{text}");
        }
        let short = STANDARD
            .encode([7_u8; 16])
            .parse::<MasterKey>()
            .unwrap_err();
        assert!(short.contains("got 16"), "{short}");
        assert!("not a key!".parse::<MasterKey>().is_err());
        assert!("".parse::<MasterKey>().is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let key: MasterKey = hex::encode([0xab_u8; 32]).parse().unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey(***)");
    }

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_context() {
        let key = MasterKey([1; 32]);
        let sealed = key.seal(b"secret seed", b"kid-1").unwrap();
        assert!(!sealed.windows(11).any(|window| window == b"secret seed"));
        assert_eq!(key.open(&sealed, b"kid-1").unwrap(), b"secret seed");
        assert!(key.open(&sealed, b"kid-2").is_err());
        assert!(MasterKey([2; 32]).open(&sealed, b"kid-1").is_err());
        let mut altered = sealed.clone();
        if let Some(last) = altered.last_mut() {
            *last ^= 1;
        }
        assert!(key.open(&altered, b"kid-1").is_err());
        assert!(key.open(&sealed[..5], b"kid-1").is_err());
    }
}
