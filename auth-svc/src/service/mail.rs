//! The mail the flows send: what each says, the single-use token its link carries (made and
//! consumed here), and how it leaves (in the background, so an answer never waits for delivery
//! or reveals it).

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;

use super::State;
use crate::{
    domain::secret,
    error::Error,
    mailer::Mail,
    store::{
        self,
        email_tokens::{EmailTokenRow, PASSWORD_RESET, VERIFY_EMAIL},
        users::UserRow,
    },
};

/// A verification token for `email` (the account's, or the one it asks to change to) and the mail
/// carrying it there.
pub fn verification(
    state: &State,
    user: &UserRow,
    email: &str,
    now: DateTime<Utc>,
) -> (EmailTokenRow, Mail) {
    let (token, token_hash) = secret::new_token();
    let row = EmailTokenRow {
        token_hash,
        user_id: user.id,
        purpose: VERIFY_EMAIL.into(),
        email: email.to_owned(),
        created_at: now,
        expires_at: now + state.config.email_token_ttl,
        used_at: None,
    };
    let mail = Mail {
        to: email.to_owned(),
        subject: "Confirm your email address".into(),
        intro: format!(
            "Hello {}, please confirm your email address (the link is valid for 24 hours):",
            user.display_name
        ),
        link: format!("{}/verify-email?token={token}", state.config.public_url),
    };
    (row, mail)
}

/// Sends `mail` in the background: the answer must not wait for (or reveal) delivery.
pub fn send(state: &State, mail: Mail) {
    let mailer = state.mailer.clone();
    tokio::spawn(async move {
        let to = mail.to.clone();
        if let Err(err) = mailer.send(mail).await {
            tracing::error!(%to, %err, "mail not sent");
        }
    });
}

/// The notice to `user`'s old address that its email is now `new_email`: a takeover is then
/// not silent.
pub fn email_changed_notice(state: &State, user: &UserRow, new_email: &str) -> Mail {
    Mail {
        to: user.email.clone(),
        subject: "Your email address is being changed".into(),
        intro: format!(
            "Hello {}, someone signed in to your account {} asked to change its email address \
             to {new_email}; it changes once that address is confirmed. If you did this, there is \
             nothing to do. If you did not, someone knows your password: reset it at once.",
            user.display_name, user.username
        ),
        link: state.config.public_url.clone(),
    }
}

/// A password reset token for `user` and the mail carrying it to the account's address.
pub fn password_reset(state: &State, user: &UserRow, now: DateTime<Utc>) -> (EmailTokenRow, Mail) {
    let (token, token_hash) = secret::new_token();
    let row = EmailTokenRow {
        token_hash,
        user_id: user.id,
        purpose: PASSWORD_RESET.into(),
        email: user.email.clone(),
        created_at: now,
        expires_at: now + state.config.reset_token_ttl,
        used_at: None,
    };
    let mail = Mail {
        to: user.email.clone(),
        subject: "Reset your password".into(),
        intro: "Someone asked to reset your password. If it was you, follow this link within 30 \
                minutes; otherwise ignore this mail:"
            .into(),
        link: format!("{}/reset-password?token={token}", state.config.public_url),
    };
    (row, mail)
}

/// Consumes a single-use email token of `purpose`: `FAILED_PRECONDITION` when unknown, used or
/// expired.
pub async fn consume_token(
    conn: &mut AsyncPgConnection,
    purpose: &str,
    token: &str,
    now: DateTime<Utc>,
) -> Result<EmailTokenRow, Error> {
    let row = store::email_tokens::lock(conn, purpose, &secret::hash(token))
        .await?
        .filter(|row| row.used_at.is_none() && row.expires_at > now)
        .ok_or_else(|| {
            Error::FailedPrecondition("the token is unknown, expired or already used".into())
        })?;
    store::email_tokens::mark_used(conn, &row.token_hash, now).await?;
    Ok(row)
}
