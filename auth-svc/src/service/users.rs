//! The account's own flows: VerifyEmail, GetMe and UpdateMe.

use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;
use uuid::Uuid;

use super::{State, mail, passwords, registration};
use crate::{
    domain::{ClientInfo, UserStatus, audit::EventType, validate},
    error::Error,
    mailer::Mail,
    store::{
        self,
        audit::NewEvent,
        email_tokens::VERIFY_EMAIL,
        users::{ProfileChange, UserRow},
    },
};

pub async fn verify_email(
    state: &State,
    client: &ClientInfo,
    token: &str,
) -> Result<UserRow, Error> {
    let token = validate::required("token", token)?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let row = mail::consume_token(conn, VERIFY_EMAIL, token, now).await?;
        let user = store::users::lock(conn, row.user_id)
            .await?
            .filter(|user| user.status() != UserStatus::Deleted)
            .ok_or_else(no_longer_the_email)?;
        let user = if user.email == row.email {
            store::users::set_email_verified(conn, user.id, now).await?
        } else if user.pending_email.as_ref() == Some(&row.email) {
            // The new address is proven: only now does it become the account's email.
            store::users::adopt_pending_email(conn, user.id, &row.email, now)
                .await
                .map_err(registration::already_exists)?
        } else {
            return Err(no_longer_the_email());
        };
        let event = NewEvent {
            event_type: EventType::EmailVerified,
            actor: Some(user.id),
            subject: Some(user.id),
            client_address: &client.address,
            details: json!({}),
        };
        store::audit::record(conn, &event, now).await?;
        Ok(user)
    })
    .await
}

fn no_longer_the_email() -> Error {
    Error::FailedPrecondition("the token is for an email the account no longer has".into())
}

/// The signed-in user's account; `UNAUTHENTICATED` once deleted.
pub async fn me(state: &State, user_id: Uuid) -> Result<UserRow, Error> {
    let mut conn = state.pool.get().await?;
    store::users::find(&mut conn, user_id)
        .await?
        .filter(|user| user.status() != UserStatus::Deleted)
        .ok_or(Error::Unauthenticated("the account no longer exists"))
}

/// UpdateMe's changes; `None` leaves a field unchanged.
#[derive(Debug)]
pub struct ProfileUpdate<'a> {
    pub display_name: Option<&'a str>,
    pub email: Option<&'a str>,
    /// Required to change the email: an access token alone must not be enough to move the
    /// account (and its password resets) to another inbox.
    pub current_password: &'a str,
}

/// Applies `update`; returns the user and whether a verification mail was sent. A new email
/// needs the current password; the old address is told.
pub async fn update_me(
    state: &State,
    client: &ClientInfo,
    user_id: Uuid,
    update: &ProfileUpdate<'_>,
) -> Result<(UserRow, bool), Error> {
    let display_name = update
        .display_name
        .map(validate::display_name)
        .transpose()?;
    let email = update
        .email
        .map(|email| validate::email("email", email))
        .transpose()?;
    let mut password_confirmed = false;
    if let Some(email) = &email {
        let current = me(state, user_id).await?;
        if *email != current.email {
            passwords::confirm_password(
                state,
                client,
                &current,
                "current_password",
                update.current_password,
            )
            .await?;
            password_confirmed = true;
        }
    }
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let (user, mails) = conn
        .transaction::<_, Error, _>(async |conn| {
            let current = store::users::lock(conn, user_id)
                .await?
                .filter(|user| user.status() != UserStatus::Deleted)
                .ok_or(Error::Unauthenticated("the account no longer exists"))?;
            let asked_email = email.is_some();
            let new_email = email.filter(|email| *email != current.email);
            if new_email.is_some() && !password_confirmed {
                // Another UpdateMe changed the email between the check and this transaction.
                return Err(Error::FailedPrecondition(
                    "the email changed meanwhile; retry with current_password".into(),
                ));
            }
            // Whether another account holds the address is decided when its link is followed
            // (ALREADY_EXISTS then): answering here would tell anyone signed in which
            // addresses are registered.
            let change = ProfileChange {
                display_name,
                // Asking for the current email again cancels a pending change.
                pending_email: asked_email.then(|| new_email.clone()),
                updated_at: now,
            };
            let user = store::users::update_profile(conn, user_id, &change).await?;
            let mails = match &new_email {
                Some(new_email) => {
                    start_email_change(conn, state, client, &current, &user, new_email, now).await?
                }
                None => Vec::new(),
            };
            Ok((user, mails))
        })
        .await?;
    let verification_sent = !mails.is_empty();
    for mail in mails {
        mail::send(state, mail);
    }
    Ok((user, verification_sent))
}

/// Records that `user` (formerly `before`) asked to move to `new_email`: a verification token for
/// the new address, audited. Returns the mail to send: the link to the new address and a notice
/// to the old one.
async fn start_email_change(
    conn: &mut AsyncPgConnection,
    state: &State,
    client: &ClientInfo,
    before: &UserRow,
    user: &UserRow,
    new_email: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Mail>, Error> {
    let (token, verify) = mail::verification(state, user, new_email, now);
    store::email_tokens::insert(conn, &token).await?;
    let event = NewEvent {
        event_type: EventType::EmailChanged,
        actor: Some(user.id),
        subject: Some(user.id),
        client_address: &client.address,
        details: json!({}),
    };
    store::audit::record(conn, &event, now).await?;
    Ok(vec![
        verify,
        mail::email_changed_notice(state, before, new_email),
    ])
}
