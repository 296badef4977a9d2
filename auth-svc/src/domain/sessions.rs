//! The rules of sign-in sessions: refresh-token rotation with reuse detection, a session's
//! absolute lifetime, what counts as a recent sign-in, and how a password attempt waits for the
//! lockout rule.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    UserStatus,
    secret::{self, HashKey},
};

/// What the rotation rule looks at of a presented refresh token, its session and their owner.
#[derive(Debug, Clone)]
pub struct PresentedRefresh {
    pub token_expires_at: DateTime<Utc>,
    /// The token was exchanged before.
    pub token_rotated: bool,
    /// When the session signed in (refreshes do not renew it).
    pub session_created_at: DateTime<Utc>,
    pub session_expires_at: DateTime<Utc>,
    pub session_revoked: bool,
    pub owner: UserStatus,
}

/// What becomes of a presented refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshVerdict {
    /// Exchange it for a new pair.
    Rotate,
    /// It was exchanged before: someone else holds the chain. Revoke the session.
    Reused,
    /// Refuse it (revoked or expired session or token, or the user is not active).
    Refuse,
}

/// The rotation rule for `presented`; a session older than `max_lifetime` is over whatever its
/// tokens say (sessions of before the limit included).
pub fn judge_refresh(
    presented: &PresentedRefresh,
    max_lifetime: chrono::Duration,
    now: DateTime<Utc>,
) -> RefreshVerdict {
    if presented.session_revoked {
        RefreshVerdict::Refuse
    } else if presented.token_rotated {
        RefreshVerdict::Reused
    } else if presented.token_expires_at <= now
        || presented.session_expires_at <= now
        || presented.session_created_at + max_lifetime <= now
        || presented.owner != UserStatus::Active
    {
        RefreshVerdict::Refuse
    } else {
        RefreshVerdict::Rotate
    }
}

/// When a refresh token issued at `now` in a session signed in at `signed_in_at` expires: `ttl`
/// later, but never after the session's absolute end, so refreshing cannot extend it forever.
pub fn refresh_expiry(
    signed_in_at: DateTime<Utc>,
    now: DateTime<Utc>,
    ttl: chrono::Duration,
    max_lifetime: chrono::Duration,
) -> DateTime<Utc> {
    (now + ttl).min(signed_in_at + max_lifetime)
}

/// Whether a session signed in at `signed_in_at` (`None`: no such unrevoked session) is a
/// sign-in of the last `window`. Refreshes do not renew a sign-in.
pub fn signed_in_within(
    signed_in_at: Option<DateTime<Utc>>,
    window: chrono::Duration,
    now: DateTime<Utc>,
) -> bool {
    signed_in_at.is_some_and(|at| now - at < window)
}

/// The lockout key of a sign-in: the account when one matched, else the name tried (so unknown
/// names lock the same way and lockout reveals nothing either), keyed-hashed: what was typed may
/// be a password put into the wrong box, and a plain hash of it could be brute-forced offline.
pub fn account_key(name_key: &HashKey, account: Option<Uuid>, name: &str) -> String {
    account.map_or_else(
        || format!("name:{}", hex::encode(secret::keyed_hash(name_key, name))),
        |id| id.to_string(),
    )
}

/// The lockout key of registering `email`: a taken address counts as a failed attempt on it,
/// which bounds enumeration the way lockout bounds guessing.
pub fn registration_key(name_key: &HashKey, email: &str) -> String {
    format!(
        "registration:{}",
        hex::encode(secret::keyed_hash(name_key, email))
    )
}

/// How long a password attempt waits before asking again, the `retry`th time (0-based), when the
/// limit is full only of attempts still being checked: doubling from 20 ms up to 320 ms, so a
/// crowd of waiters does not re-run the admission transaction every few milliseconds.
pub fn recheck_delay(retry: u32) -> std::time::Duration {
    std::time::Duration::from_millis(20 << retry.min(4))
}

/// The longest a password attempt waits for others to be checked; then it is refused as if
/// locked for a second (a check takes far less unless the server is overloaded).
pub const MAX_ADMISSION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    const LIFETIME: Duration = Duration::days(30);

    fn fresh(now: DateTime<Utc>) -> PresentedRefresh {
        PresentedRefresh {
            token_expires_at: now + Duration::days(30),
            token_rotated: false,
            session_created_at: now,
            session_expires_at: now + Duration::days(30),
            session_revoked: false,
            owner: UserStatus::Active,
        }
    }

    #[test]
    fn refresh_rotates_once_and_reuse_is_theft() {
        let now = Utc::now();
        let mut presented = fresh(now);
        assert_eq!(
            judge_refresh(&presented, LIFETIME, now),
            RefreshVerdict::Rotate
        );
        presented.token_rotated = true;
        assert_eq!(
            judge_refresh(&presented, LIFETIME, now),
            RefreshVerdict::Reused
        );
        presented.session_revoked = true;
        assert_eq!(
            judge_refresh(&presented, LIFETIME, now),
            RefreshVerdict::Refuse
        );
    }

    #[test]
    fn waiting_admissions_back_off_and_give_up() {
        let delays: Vec<u128> = (0..6)
            .map(|retry| recheck_delay(retry).as_millis())
            .collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 320]);
        // About a dozen checks in the longest wait, not one every 20 ms (150).
        let mut waited = std::time::Duration::ZERO;
        let mut checks = 0;
        while waited < MAX_ADMISSION_WAIT {
            waited += recheck_delay(checks);
            checks += 1;
        }
        assert!(checks <= 14, "{checks} checks");
    }

    #[test]
    fn expired_tokens_and_inactive_users_are_refused() {
        let now = Utc::now();
        let later = now + Duration::days(31);
        assert_eq!(
            judge_refresh(&fresh(now), LIFETIME, later),
            RefreshVerdict::Refuse
        );
        for owner in [UserStatus::Disabled, UserStatus::Deleted] {
            let presented = PresentedRefresh {
                owner,
                ..fresh(now)
            };
            assert_eq!(
                judge_refresh(&presented, LIFETIME, now),
                RefreshVerdict::Refuse
            );
        }
    }

    #[test]
    fn a_session_ends_at_its_absolute_lifetime_however_often_refreshed() {
        let signed_in = Utc::now();
        let mut presented = fresh(signed_in);
        let ttl = Duration::days(30);
        let lifetime = Duration::days(7);
        // Refreshed a day before the end: the new token stops at the end, not 30 days later.
        let late = signed_in + Duration::days(6);
        let expiry = refresh_expiry(signed_in, late, ttl, lifetime);
        assert_eq!(expiry, signed_in + lifetime);
        assert_eq!(
            refresh_expiry(signed_in, signed_in, Duration::days(1), lifetime),
            signed_in + Duration::days(1)
        );
        // A session whose tokens still run (e.g. issued before the limit) ends anyway.
        presented.token_expires_at = signed_in + Duration::days(60);
        presented.session_expires_at = presented.token_expires_at;
        assert_eq!(
            judge_refresh(&presented, lifetime, late),
            RefreshVerdict::Rotate
        );
        assert_eq!(
            judge_refresh(&presented, lifetime, signed_in + lifetime),
            RefreshVerdict::Refuse
        );
    }

    #[test]
    fn only_a_fresh_sign_in_is_recent() {
        let signed_in = Utc::now();
        let window = Duration::minutes(10);
        let within = signed_in + Duration::minutes(9);
        assert!(signed_in_within(Some(signed_in), window, within));
        assert!(!signed_in_within(
            Some(signed_in),
            window,
            signed_in + window
        ));
        assert!(!signed_in_within(None, window, within));
    }

    #[test]
    fn unknown_names_are_keyed_hashed_and_accounts_are_their_id() {
        let key = HashKey::new([7; 32]);
        let account = Uuid::now_v7();
        assert_eq!(account_key(&key, Some(account), "ada"), account.to_string());
        let by_name = account_key(&key, None, "hunter2hunter2");
        assert!(by_name.starts_with("name:"));
        assert!(!by_name.contains("hunter2"));
        assert_eq!(by_name, account_key(&key, None, "hunter2hunter2"));
    }
}
