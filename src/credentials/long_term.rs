//! The long-term credential lifecycle as pure functions of the state, the
//! database listing and the time they are given.

use std::collections::BTreeSet;

use super::naming::{self, user_expiry};
use super::state_file::{CredentialState, LongTermCredential};

/// What start-up should do with the users found in the database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reconciliation {
    /// The persisted credential, still valid and present: serve it again.
    pub resume: Option<LongTermCredential>,
    /// Agent users to delete now: expired past grace, or created but never
    /// served (persisting comes before serving, so a user the state file
    /// does not know was never handed out).
    pub delete_now: Vec<String>,
    /// Served users to keep until their expiry plus grace.
    pub keep: Vec<String>,
}

/// Compares the state file with the database listing at `now`.
///
/// Users without the agent's prefix are never touched. Without a state file
/// the agent cannot tell served users from unserved ones, so it keeps every
/// unexpired user of its own until expiry.
pub fn reconcile(
    state: Option<&CredentialState>,
    database_users: &[String],
    now: u64,
    grace: u64,
) -> Reconciliation {
    let known: Option<BTreeSet<&str>> = state.map(|state| {
        state
            .current
            .iter()
            .map(|credential| credential.username.as_str())
            .chain(state.served.iter().map(String::as_str))
            .collect()
    });
    let current = state.and_then(|state| state.current.as_ref());
    let mut result = Reconciliation::default();
    for user in database_users {
        let Some(expiry) = user_expiry(user) else {
            continue;
        };
        let never_served = known
            .as_ref()
            .is_some_and(|known| !known.contains(user.as_str()));
        if expiry.saturating_add(grace) <= now || never_served {
            result.delete_now.push(user.clone());
        } else if current.is_some_and(|c| &c.username == user && c.expires_at > now) {
            result.resume = current.cloned();
        } else {
            result.keep.push(user.clone());
        }
    }
    result
}

/// When the credential issued at `issued_at` should be replaced.
pub fn rotation_due(current: Option<&LongTermCredential>, rotate_interval: u64) -> u64 {
    current.map_or(0, |credential| {
        credential.issued_at.saturating_add(rotate_interval)
    })
}

/// When an agent user may be deleted: its expiry plus grace. `None` for a
/// user that is not the agent's.
pub fn deletion_due(username: &str, grace: u64) -> Option<u64> {
    user_expiry(username).map(|expiry| expiry.saturating_add(grace))
}

/// The users to keep waiting for deletion after a reconciliation: `keep`
/// plus those whose deletion failed, so that no user leaves the state before
/// a listing confirms it gone.
pub fn with_undeleted(mut keep: Vec<String>, undeleted: Vec<String>) -> Vec<String> {
    for user in undeleted {
        if !keep.contains(&user) {
            keep.push(user);
        }
    }
    keep
}

/// A fresh credential issued at `now`, valid for `lifetime` seconds.
pub fn issue(now: u64, lifetime: u64) -> LongTermCredential {
    let expires_at = now.saturating_add(lifetime);
    LongTermCredential {
        username: naming::new_username(expires_at),
        password: naming::new_password(),
        issued_at: now,
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::state_file::STATE_VERSION;
    use crate::secret::Secret;

    fn credential(username: &str, issued_at: u64, expires_at: u64) -> LongTermCredential {
        LongTermCredential {
            username: username.into(),
            password: Secret::new("pw"),
            issued_at,
            expires_at,
        }
    }

    fn state(current: Option<LongTermCredential>, served: &[&str]) -> CredentialState {
        CredentialState {
            version: STATE_VERSION,
            realm: "r".into(),
            current,
            served: served.iter().map(|s| s.to_string()).collect(),
            secrets: Vec::new(),
        }
    }

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resumes_valid_present_credential_and_sorts_the_rest() {
        let current = credential("ta1-2000-cur", 1000, 2000);
        let state = state(Some(current.clone()), &["ta1-1500-old", "ta1-900-gone"]);
        let database = users(&[
            "alice",
            "ta1-2000-cur",
            "ta1-1500-old",
            "ta1-1900-unserved",
            "ta1-900-gone",
        ]);
        let result = reconcile(Some(&state), &database, 1200, 60);
        assert_eq!(result.resume, Some(current));
        assert_eq!(result.keep, vec!["ta1-1500-old"]);
        assert_eq!(result.delete_now, vec!["ta1-1900-unserved", "ta1-900-gone"]);
    }

    #[test]
    fn current_missing_from_database_is_not_resumed() {
        let state = state(Some(credential("ta1-2000-cur", 1000, 2000)), &[]);
        let result = reconcile(Some(&state), &users(&["alice"]), 1200, 60);
        assert_eq!(result, Reconciliation::default());
    }

    #[test]
    fn expired_current_is_kept_until_grace_then_deleted() {
        let state = state(Some(credential("ta1-2000-cur", 1000, 2000)), &[]);
        let database = users(&["ta1-2000-cur"]);
        let result = reconcile(Some(&state), &database, 2030, 60);
        assert_eq!(result.resume, None);
        assert_eq!(result.keep, vec!["ta1-2000-cur"]);
        let result = reconcile(Some(&state), &database, 2060, 60);
        assert_eq!(result.delete_now, vec!["ta1-2000-cur"]);
    }

    #[test]
    fn without_a_state_file_unexpired_users_are_kept() {
        let database = users(&["ta1-2000-a", "ta1-100-b", "bob"]);
        let result = reconcile(None, &database, 1000, 60);
        assert_eq!(result.keep, vec!["ta1-2000-a"]);
        assert_eq!(result.delete_now, vec!["ta1-100-b"]);
        assert_eq!(result.resume, None);
    }

    #[test]
    fn users_whose_deletion_failed_stay_due() {
        let state = state(None, &["ta1-900-gone"]);
        let database = users(&["ta1-900-gone", "ta1-1500-kept"]);
        let plan = reconcile(Some(&state), &database, 1200, 60);
        assert_eq!(plan.delete_now, vec!["ta1-900-gone", "ta1-1500-kept"]);
        let served = with_undeleted(plan.keep, vec!["ta1-900-gone".into()]);
        assert_eq!(served, vec!["ta1-900-gone"]);
        assert!(deletion_due(&served[0], 60).is_some_and(|due| due <= 1200));
        assert_eq!(
            with_undeleted(vec!["a".into()], vec!["a".into(), "b".into()]),
            vec!["a", "b"]
        );
    }

    #[test]
    fn schedule_times() {
        let current = credential("ta1-2000-cur", 1000, 2000);
        assert_eq!(rotation_due(Some(&current), 600), 1600);
        assert_eq!(rotation_due(None, 600), 0);
        assert_eq!(deletion_due("ta1-2000-cur", 60), Some(2060));
        assert_eq!(deletion_due("alice", 60), None);
        let issued = issue(1000, 7200);
        assert_eq!(issued.expires_at, 8200);
        assert_eq!(user_expiry(&issued.username), Some(8200));
    }
}
