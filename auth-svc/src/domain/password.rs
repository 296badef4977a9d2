//! Passwords: the policy new passwords must meet, and argon2id hashing on the blocking pool so a
//! hash (tens of milliseconds, 19 MiB) never stalls the async runtime.

use crate::error::Error;
use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{SaltString, rand_core::OsRng},
};

pub const MIN_PASSWORD_CHARS: usize = 10;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Whether `password` may become the password of the account (`username`, `email`).
pub fn check_policy(
    field: &'static str,
    password: &str,
    username: &str,
    email: &str,
    min_strength: u8,
) -> Result<(), Error> {
    let chars = password.chars().count();
    if chars == 0 {
        return Err(Error::invalid(field, "is required"));
    }
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(Error::invalid(
            field,
            format!("must be {MIN_PASSWORD_CHARS}–{MAX_PASSWORD_CHARS} characters"),
        ));
    }
    let lowered = password.to_lowercase();
    let local_part = email.split('@').next().unwrap_or_default();
    for (what, name) in [("username", username), ("email address", local_part)] {
        if name.chars().count() >= 3 && lowered.contains(&name.to_lowercase()) {
            return Err(Error::invalid(
                field,
                format!("must not contain your {what}"),
            ));
        }
    }
    let score = u8::from(zxcvbn::zxcvbn(password, &[username, local_part, email]).score());
    if score < min_strength {
        return Err(Error::invalid(
            field,
            format!(
                "is too easy to guess (strength {score} of 4, at least {min_strength} needed); \
                 try a longer passphrase"
            ),
        ));
    }
    Ok(())
}

/// argon2id hashing with the configured cost.
#[derive(Debug)]
pub struct Hasher {
    argon2: Argon2<'static>,
    /// Verified against when no account matched, so that takes as long as a wrong password.
    dummy: String,
    /// At most one hash per core at a time: each takes the configured memory (19 MiB), and more
    /// in parallel only queue on the blocking pool while holding that memory.
    running: tokio::sync::Semaphore,
}

impl Hasher {
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> anyhow::Result<Self> {
        let params = Params::new(memory_kib, iterations, parallelism, None)
            .map_err(|err| anyhow::anyhow!("argon2 parameters: {err}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        // Made at start (one hash, blocking briefly) so even the first unknown-user login takes
        // exactly one verification.
        let (random, _) = super::secret::new_token();
        let dummy = argon2
            .hash_password(random.as_bytes(), &SaltString::generate(&mut OsRng))
            .map_err(|err| anyhow::anyhow!("argon2: {err}"))?
            .to_string();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Ok(Self {
            argon2,
            dummy,
            running: tokio::sync::Semaphore::new(cores),
        })
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.running
            .acquire()
            .await
            .map_err(|err| Error::Internal(format!("password hashing closed: {err}")))
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, Error> {
        let _permit = self.permit().await?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|err| Error::Internal(format!("hashing a password: {err}")))
        })
        .await
        .map_err(|err| Error::Internal(format!("hashing task: {err}")))?
    }

    /// Whether `password` matches `hash`. Without a hash (no such account, or an account that
    /// cannot log in) a dummy hash is checked, so the answer (false) takes as long.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Error> {
        let (hash, real) = match hash {
            Some(hash) => (hash, true),
            None => (self.dummy.clone(), false),
        };
        let _permit = self.permit().await?;
        let argon2 = self.argon2.clone();
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| argon2.verify_password(password.as_bytes(), &parsed).is_ok())
                .map_err(|err| Error::Internal(format!("stored password hash: {err}")))
        })
        .await
        .map_err(|err| Error::Internal(format!("verifying task: {err}")))??;
        Ok(real && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(result: Result<(), Error>) -> String {
        match result {
            Err(Error::InvalidField(err)) => err.to_string(),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn the_policy_refuses_short_personal_and_weak_passwords() {
        let check = |password: &str| check_policy("password", password, "ada", "lovelace@x.org", 3);
        assert!(check("correct horse battery staple").is_ok());
        assert!(problem(check("")).contains("required"));
        assert!(problem(check("Tr0ub4d!")).contains("10–128"));
        assert!(problem(check(&"x".repeat(129))).contains("10–128"));
        assert!(problem(check("my-ADA-password-9q")).contains("username"));
        assert!(problem(check("zz LoveLace zz 81pq")).contains("email"));
        assert!(problem(check("password123")).contains("too easy"));
        assert!(check_policy("password", "password123", "ada", "a@x.org", 0).is_ok());
    }

    #[tokio::test]
    async fn hashes_verify_only_the_right_password() {
        let hasher = Hasher::new(1024, 1, 1).unwrap_or_else(|err| panic!("{err}"));
        let hash = hasher.hash("right password".into()).await.ok();
        assert!(hash.as_deref().is_some_and(|h| h.starts_with("$argon2id$")));
        assert!(matches!(
            hasher.verify("right password".into(), hash.clone()).await,
            Ok(true)
        ));
        assert!(matches!(
            hasher.verify("wrong password".into(), hash).await,
            Ok(false)
        ));
        assert!(matches!(
            hasher.verify("right password".into(), None).await,
            Ok(false)
        ));
    }
}
