//! RSA keys and SHA256withRSA (PKCS#1 v1.5) signatures, the `RSA2` of Alipay's open platform.
//!
//! Keys load from PEM (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`, SPKI `PUBLIC KEY`, PKCS#1
//! `RSA PUBLIC KEY`) or from the bare base64 DER that Alipay's console hands out. The
//! cryptography is RustCrypto's `rsa` crate; this module only chooses formats and encodings.

use std::{
    fmt,
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use rand::rngs::OsRng;
use rsa::{
    RsaPrivateKey, RsaPublicKey,
    pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey},
    pkcs1v15::{Signature, SigningKey, VerifyingKey},
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding},
    signature::{Keypair, RandomizedSigner, SignatureEncoding, Verifier},
    traits::PublicKeyParts,
};
use sha2::Sha256;

/// Alipay's keys are 2048 bits; anything shorter is refused at load, which also guarantees that
/// a SHA-256 DigestInfo always fits the modulus, so signing cannot fail.
const MIN_BITS: usize = 2048;

/// The size of keys [`generate`] makes.
const GENERATED_BITS: usize = 2048;

/// Why a key could not be loaded or written. Messages never quote key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "unsupported PEM block {0:?}: expected PRIVATE KEY, RSA PRIVATE KEY, PUBLIC KEY or RSA PUBLIC KEY"
    )]
    UnsupportedPem(String),
    #[error("a private key was given where a public key is expected, or the reverse")]
    WrongKind,
    #[error("neither PEM nor base64 DER")]
    NotBase64,
    #[error("not a valid {format}: {cause}")]
    Invalid { format: &'static str, cause: String },
    #[error("RSA key of {0} bits; at least {MIN_BITS} are required")]
    TooSmall(usize),
    #[error("cannot generate an RSA key: {0}")]
    Generate(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An RSA private key ready to sign SHA256withRSA. `Debug` shows only its size.
#[derive(Clone)]
pub struct PrivateKey(SigningKey<Sha256>);

/// An RSA public key ready to verify SHA256withRSA.
#[derive(Clone)]
pub struct PublicKey(VerifyingKey<Sha256>);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({} bits, ***)", self.rsa().n().bits())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bits)", self.0.as_ref().n().bits())
    }
}

impl PrivateKey {
    fn new(key: RsaPrivateKey) -> Result<Self, KeyError> {
        check_size(key.n().bits())?;
        Ok(Self(SigningKey::new(key)))
    }

    fn rsa(&self) -> &RsaPrivateKey {
        self.0.as_ref()
    }

    /// Parses a PEM private key (PKCS#8 or PKCS#1) or bare base64 DER of either.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let key = match pem_label(text) {
            Some("PRIVATE KEY") => RsaPrivateKey::from_pkcs8_pem(text.trim())
                .map_err(|err| invalid("PKCS#8 private key", err))?,
            Some("RSA PRIVATE KEY") => RsaPrivateKey::from_pkcs1_pem(text.trim())
                .map_err(|err| invalid("PKCS#1 private key", err))?,
            Some("PUBLIC KEY" | "RSA PUBLIC KEY") => return Err(KeyError::WrongKind),
            Some(other) => return Err(KeyError::UnsupportedPem(other.to_owned())),
            None => {
                let der = bare_der(text)?;
                RsaPrivateKey::from_pkcs8_der(&der)
                    .or_else(|_| RsaPrivateKey::from_pkcs1_der(&der))
                    .map_err(|err| invalid("PKCS#8 or PKCS#1 DER private key", err))?
            }
        };
        Self::new(key)
    }

    /// Reads [`PrivateKey::from_text`] from a file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        Self::from_text(&read(path)?)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Writes the key as PKCS#8 PEM to a new file readable by its owner only; an existing file
    /// is an error, never overwritten.
    pub fn write_pem(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self
            .rsa()
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|err| invalid("PKCS#8 private key", err))?;
        write_new(path, pem.as_bytes(), 0o600)
    }
}

impl PublicKey {
    /// Parses a PEM public key (SPKI or PKCS#1) or bare base64 DER of either, which is how
    /// Alipay's console shows its public key.
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let key = match pem_label(text) {
            Some("PUBLIC KEY") => RsaPublicKey::from_public_key_pem(text.trim())
                .map_err(|err| invalid("SPKI public key", err))?,
            Some("RSA PUBLIC KEY") => RsaPublicKey::from_pkcs1_pem(text.trim())
                .map_err(|err| invalid("PKCS#1 public key", err))?,
            Some("PRIVATE KEY" | "RSA PRIVATE KEY") => return Err(KeyError::WrongKind),
            Some(other) => return Err(KeyError::UnsupportedPem(other.to_owned())),
            None => {
                let der = bare_der(text)?;
                RsaPublicKey::from_public_key_der(&der)
                    .or_else(|_| RsaPublicKey::from_pkcs1_der(&der))
                    .map_err(|err| invalid("SPKI or PKCS#1 DER public key", err))?
            }
        };
        check_size(key.n().bits())?;
        Ok(Self(VerifyingKey::new(key)))
    }

    /// Reads [`PublicKey::from_text`] from a file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        Self::from_text(&read(path)?)
    }

    /// Writes the key as SPKI PEM to a new file; an existing file is an error.
    pub fn write_pem(&self, path: &Path) -> Result<(), KeyError> {
        let pem = self
            .0
            .as_ref()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|err| invalid("SPKI public key", err))?;
        write_new(path, pem.as_bytes(), 0o644)
    }
}

/// Generates a 2048-bit key pair (the public key is [`PrivateKey::public_key`]).
pub fn generate() -> Result<PrivateKey, KeyError> {
    let key = RsaPrivateKey::new(&mut OsRng, GENERATED_BITS)
        .map_err(|err| KeyError::Generate(err.to_string()))?;
    PrivateKey::new(key)
}

/// Signs `content`'s UTF-8 bytes with SHA256withRSA and returns the base64 signature.
pub fn sign(key: &PrivateKey, content: &str) -> String {
    // The randomised signer blinds the private-key operation against timing attacks; the
    // PKCS#1 v1.5 signature itself stays deterministic. It cannot fail: keys are at least
    // MIN_BITS long, so the DigestInfo always fits.
    let signature: Signature = key.0.sign_with_rng(&mut OsRng, content.as_bytes());
    STANDARD.encode(signature.to_bytes())
}

/// Whether `signature_b64` is a valid SHA256withRSA signature of `content` by `key`.
pub fn verify(key: &PublicKey, content: &str, signature_b64: &str) -> bool {
    let Ok(bytes) = STANDARD.decode(signature_b64) else {
        return false;
    };
    let Ok(signature) = Signature::try_from(bytes.as_slice()) else {
        return false;
    };
    key.0.verify(content.as_bytes(), &signature).is_ok()
}

fn check_size(bits: usize) -> Result<(), KeyError> {
    if bits < MIN_BITS {
        return Err(KeyError::TooSmall(bits));
    }
    Ok(())
}

fn invalid(format: &'static str, err: impl fmt::Display) -> KeyError {
    KeyError::Invalid {
        format,
        cause: err.to_string(),
    }
}

/// The label of the first PEM block (`RSA PRIVATE KEY` of `-----BEGIN RSA PRIVATE KEY-----`).
fn pem_label(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix("-----BEGIN ")?;
    rest.split_once("-----").map(|(label, _)| label)
}

/// Alipay's console shows keys as one base64 line; copies often wrap it, so whitespace is dropped.
fn bare_der(text: &str) -> Result<Vec<u8>, KeyError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    // The decode error names the offending byte, a piece of the key: it is not passed on.
    STANDARD.decode(compact).map_err(|_| KeyError::NotBase64)
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let io_error = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Set at creation, so a private key is never readable by others, not even briefly.
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io_error)?;
    file.write_all(contents).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};

    use super::*;
    use crate::sim::test_keys;

    fn der_base64(der: &[u8]) -> String {
        STANDARD.encode(der)
    }

    #[test]
    fn a_signature_verifies_with_the_matching_public_key_only() {
        let keys = test_keys();
        let signature = sign(&keys.merchant, "a=1&b=2");
        assert!(verify(&keys.merchant.public_key(), "a=1&b=2", &signature));
        assert!(!verify(&keys.merchant.public_key(), "a=1&b=3", &signature));
        assert!(!verify(&keys.alipay.public_key(), "a=1&b=2", &signature));
        assert!(!verify(
            &keys.merchant.public_key(),
            "a=1&b=2",
            "not base64!"
        ));
        assert!(!verify(&keys.merchant.public_key(), "a=1&b=2", "AAAA"));
    }

    #[test]
    fn pkcs1v15_signatures_are_deterministic() {
        // Alipay's SDKs compare nothing but the verification; determinism shows the blinding
        // does not leak into the signature.
        let key = &test_keys().merchant;
        assert_eq!(sign(key, "x"), sign(key, "x"));
    }

    #[test]
    fn private_keys_load_from_every_supported_encoding() {
        let key = &test_keys().merchant;
        let rsa = key.rsa();
        let pkcs8_pem = rsa.to_pkcs8_pem(LineEnding::LF).unwrap();
        let pkcs1_pem = rsa.to_pkcs1_pem(LineEnding::CRLF).unwrap();
        let pkcs8_der = der_base64(rsa.to_pkcs8_der().unwrap().as_bytes());
        let pkcs1_der = der_base64(rsa.to_pkcs1_der().unwrap().as_bytes());
        let wrapped: String = pkcs8_der
            .as_bytes()
            .chunks(64)
            .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
            .collect();
        for text in [
            pkcs8_pem.as_str(),
            pkcs1_pem.as_str(),
            &pkcs8_der,
            &pkcs1_der,
            &wrapped,
            &format!("\n  {}  \n", pkcs8_pem.as_str()),
        ] {
            let loaded = PrivateKey::from_text(text).unwrap();
            assert_eq!(sign(&loaded, "content"), sign(key, "content"));
        }
    }

    #[test]
    fn public_keys_load_from_every_supported_encoding() {
        let key = &test_keys().alipay;
        let public = key.public_key();
        let rsa = public.0.as_ref();
        let signature = sign(key, "content");
        for text in [
            rsa.to_public_key_pem(LineEnding::LF).unwrap(),
            rsa.to_pkcs1_pem(LineEnding::LF).unwrap(),
            der_base64(rsa.to_public_key_der().unwrap().as_bytes()),
            der_base64(rsa.to_pkcs1_der().unwrap().as_bytes()),
        ] {
            let loaded = PublicKey::from_text(&text).unwrap();
            assert!(verify(&loaded, "content", &signature), "{text}");
        }
    }

    #[test]
    fn wrong_or_unsupported_inputs_are_refused_without_quoting_them() {
        let key = &test_keys().merchant;
        let private_pem = key.rsa().to_pkcs8_pem(LineEnding::LF).unwrap();
        let public_pem = key
            .public_key()
            .0
            .as_ref()
            .to_public_key_pem(LineEnding::LF);
        assert!(matches!(
            PublicKey::from_text(&private_pem),
            Err(KeyError::WrongKind)
        ));
        assert!(matches!(
            PrivateKey::from_text(&public_pem.unwrap()),
            Err(KeyError::WrongKind)
        ));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----";
        assert!(matches!(
            PrivateKey::from_text(encrypted),
            Err(KeyError::UnsupportedPem(label)) if label == "ENCRYPTED PRIVATE KEY"
        ));
        assert!(matches!(
            PrivateKey::from_text("MIIsecret!"),
            Err(KeyError::NotBase64)
        ));
        assert!(matches!(
            PublicKey::from_text("AAAA"),
            Err(KeyError::Invalid { .. })
        ));
        let small = RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let small_pem = small.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(matches!(
            PrivateKey::from_text(&small_pem),
            Err(KeyError::TooSmall(1024))
        ));
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let key = &test_keys().merchant;
        assert_eq!(format!("{key:?}"), "PrivateKey(2048 bits, ***)");
        assert_eq!(format!("{:?}", key.public_key()), "PublicKey(2048 bits)");
    }

    #[test]
    fn pem_files_are_written_once_and_private_ones_only_for_their_owner() {
        let dir = std::env::temp_dir().join(format!("rsa-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let private_path = dir.join("private.pem");
        let public_path = dir.join("public.pem");
        let _ = std::fs::remove_file(&private_path);
        let _ = std::fs::remove_file(&public_path);
        let key = &test_keys().merchant;

        key.write_pem(&private_path).unwrap();
        key.public_key().write_pem(&public_path).unwrap();

        let loaded = PrivateKey::from_file(&private_path).unwrap();
        let signature = sign(&loaded, "content");
        assert!(verify(
            &PublicKey::from_file(&public_path).unwrap(),
            "content",
            &signature
        ));
        assert!(matches!(
            key.write_pem(&private_path),
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private_path)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
