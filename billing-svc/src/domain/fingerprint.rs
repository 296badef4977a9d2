//! Request fingerprints for idempotency keys: the same key with other parameters is refused.

use sha2::{Digest, Sha256};

/// SHA-256 over the parameters, each length-prefixed so that `("ab", "c")` and `("a", "bc")`
/// differ.
pub fn of(parts: &[&str]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_between_parts_count() {
        assert_ne!(of(&["ab", "c"]), of(&["a", "bc"]));
        assert_eq!(of(&["pro", "alipay"]), of(&["pro", "alipay"]));
        assert_ne!(of(&["pro", "alipay"]), of(&["pro", "wechatpay"]));
    }
}
