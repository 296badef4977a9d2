//! Opaque bearer secrets (refresh, verification and reset tokens): 256 random bits, base64url,
//! stored only as their SHA-256; and keyed hashes of low-entropy text that must not be stored
//! guessably (login names that matched no account may be mistyped passwords).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::{RngCore, rngs::OsRng};
use sha2::{Digest, Sha256};

/// A new token and the hash to store.
pub fn new_token() -> (String, Vec<u8>) {
    let mut bytes = [0_u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash(&token);
    (token, hash)
}

/// The stored form of `token`.
pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The server secret of [`keyed_hash`]; `Debug` never shows it.
#[derive(Clone)]
pub struct HashKey([u8; 32]);

impl HashKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(***)")
    }
}

/// HMAC-SHA256 of `text` under `key`: without the server's key a stored value cannot be tested
/// against guesses, which an unsalted hash of a short text can.
pub fn keyed_hash(key: &HashKey, text: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let (a, hash_a) = new_token();
        let (b, _) = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash_a, hash(&a));
        assert_eq!(hash_a.len(), 32);
    }

    #[test]
    fn keyed_hashes_depend_on_the_key() {
        let one = HashKey::new([1; 32]);
        assert_eq!(keyed_hash(&one, "hunter2"), keyed_hash(&one, "hunter2"));
        assert_ne!(keyed_hash(&one, "hunter2"), hash("hunter2"));
        assert_ne!(
            keyed_hash(&one, "hunter2"),
            keyed_hash(&HashKey::new([2; 32]), "hunter2")
        );
    }
}
