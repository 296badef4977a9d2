//! The rules of administering accounts: which roles exist and who may grant them, what an admin
//! may do to their own account, and the filters of the audit log.

use chrono::{DateTime, Utc};
use kit::caller::role;
use uuid::Uuid;

use super::{UserStatus, audit::AuditFilter};
use crate::error::Error;

/// The validated, de-duplicated role list of UpdateUser.
pub fn parse_roles(roles: &[String]) -> Result<Vec<String>, Error> {
    let mut parsed: Vec<String> = Vec::new();
    for role in roles {
        if !role::ALL.contains(&role.as_str()) {
            return Err(Error::invalid(
                "roles",
                format!("unknown role {role:?} (known: {})", role::ALL.join(", ")),
            ));
        }
        if !parsed.contains(role) {
            parsed.push(role.clone());
        }
    }
    parsed.sort();
    Ok(parsed)
}

/// UpdateUser's changes; `None` leaves a field unchanged.
#[derive(Debug)]
pub struct UserUpdate {
    pub active: Option<bool>,
    pub roles: Option<Vec<String>>,
}

impl UserUpdate {
    /// The status `active` asks for, if any.
    pub fn status(&self) -> Option<UserStatus> {
        self.active.map(|active| {
            if active {
                UserStatus::Active
            } else {
                UserStatus::Disabled
            }
        })
    }
}

/// An update `admin` may ask for on `user_id`: it changes something, and admins may not lock
/// themselves out.
pub fn check_update(admin: Uuid, user_id: Uuid, update: &UserUpdate) -> Result<(), Error> {
    if update.active.is_none() && update.roles.is_none() {
        return Err(Error::invalid(
            "active",
            "set `active` or `roles` (or both)",
        ));
    }
    if admin != user_id {
        return Ok(());
    }
    if update.active == Some(false) {
        return Err(Error::FailedPrecondition(
            "admins cannot disable themselves".into(),
        ));
    }
    if update
        .roles
        .as_ref()
        .is_some_and(|roles| !roles.iter().any(|r| r == role::ADMIN))
    {
        return Err(Error::FailedPrecondition(
            "admins cannot remove their own admin role".into(),
        ));
    }
    Ok(())
}

/// The `service` role is granted by `auth-svc service-key issue` alone (service = a service
/// account's key): UpdateUser may keep it on an account holding it, or take it away, never give it.
pub fn check_role_grant(current: &[String], requested: &[String]) -> Result<(), Error> {
    let holds = |roles: &[String]| roles.iter().any(|r| r == role::SERVICE);
    if holds(requested) && !holds(current) {
        return Err(Error::PermissionDenied(
            "roles: the service role is granted only by `auth-svc service-key issue`".into(),
        ));
    }
    Ok(())
}

/// ListAuditEvents' filters, validated: `from` must be before `to`.
pub fn audit_filter(
    subject: Option<Uuid>,
    event_type: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<AuditFilter, Error> {
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(Error::invalid("from", "must be before `to`"));
    }
    if event_type.chars().count() > 64 {
        return Err(Error::invalid(
            "event_type",
            "must be at most 64 characters",
        ));
    }
    Ok(AuditFilter {
        subject,
        event_type: Some(event_type.to_owned()).filter(|t| !t.is_empty()),
        from,
        to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_known_and_deduplicated() {
        let roles = parse_roles(&["admin".into(), "admin".into()]).ok();
        assert_eq!(roles, Some(vec!["admin".to_owned()]));
        assert!(matches!(
            parse_roles(&["root".into()]),
            Err(Error::InvalidField(kit::error::FieldError {
                field: "roles",
                ..
            }))
        ));
    }

    #[test]
    fn admins_cannot_lock_themselves_out() {
        let me = Uuid::now_v7();
        let other = Uuid::now_v7();
        let disable = UserUpdate {
            active: Some(false),
            roles: None,
        };
        let demote = UserUpdate {
            active: None,
            roles: Some(Vec::new()),
        };
        assert!(check_update(me, other, &disable).is_ok());
        assert!(check_update(me, me, &disable).is_err());
        assert!(check_update(me, me, &demote).is_err());
    }

    #[test]
    fn the_service_role_is_kept_or_removed_but_never_granted() {
        let none: Vec<String> = Vec::new();
        let admin = vec![role::ADMIN.to_owned()];
        let service = vec![role::SERVICE.to_owned()];
        let both = vec![role::ADMIN.to_owned(), role::SERVICE.to_owned()];
        assert!(matches!(
            check_role_grant(&admin, &both),
            Err(Error::PermissionDenied(_))
        ));
        assert!(check_role_grant(&none, &service).is_err());
        assert!(check_role_grant(&service, &both).is_ok());
        assert!(check_role_grant(&service, &none).is_ok());
        assert!(check_role_grant(&none, &admin).is_ok());
    }

    #[test]
    fn audit_ranges_must_be_ordered() {
        let now = Utc::now();
        assert!(audit_filter(None, "", Some(now), Some(now)).is_err());
        assert!(audit_filter(None, "login.failed", None, Some(now)).is_ok());
    }
}
