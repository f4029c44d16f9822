//! coturn's TURN REST API credentials (`--use-auth-secret`): minting and the
//! shared-secret schedule, as pure functions.
//!
//! coturn accepts every secret of the realm at once, so a new secret is
//! added before the old one is retired, and the old one stays until every
//! credential minted with it has expired (`max_ttl` after it stopped
//! signing).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::naming::secret_created_at;
use super::state_file::SharedSecret;
use crate::secret::Secret;

/// `username = "<expiry>:<user>"`, `password = base64(HMAC-SHA1(secret, username))`.
pub fn mint(secret: &Secret, user: &str, expires_at: u64) -> (String, Secret) {
    let username = format!("{expires_at}:{user}");
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, Secret::new(password))
}

pub use crate::turn_user::is_safe_user;

/// The TTL a request gets: what it asked for, or `default`, never more than
/// `max` (coturn itself does not cap it) and never zero.
pub fn effective_ttl(requested: Option<u64>, default: u64, max: u64) -> u64 {
    requested.unwrap_or(default).clamp(1, max.max(1))
}

/// The secret that signs new credentials: the newest one not retired.
pub fn signing_secret(secrets: &[SharedSecret]) -> Option<&SharedSecret> {
    secrets
        .iter()
        .rev()
        .find(|secret| secret.retired_until.is_none())
}

/// When a new secret is due.
pub fn rotation_due(secrets: &[SharedSecret], rotate_interval: u64) -> u64 {
    signing_secret(secrets).map_or(0, |secret| {
        secret.created_at.saturating_add(rotate_interval)
    })
}

/// Makes `new` the signing secret at `now`; the previous ones stop signing
/// and stay valid for `max_ttl`, the longest any of their credentials lives.
pub fn rotate(secrets: &mut Vec<SharedSecret>, new: SharedSecret, now: u64, max_ttl: u64) {
    for secret in secrets.iter_mut().filter(|s| s.retired_until.is_none()) {
        secret.retired_until = Some(now.saturating_add(max_ttl));
    }
    secrets.push(new);
}

/// When a retired secret may be deleted.
pub fn deletion_due(secret: &SharedSecret, grace: u64) -> Option<u64> {
    secret
        .retired_until
        .map(|until| until.saturating_add(grace))
}

/// What start-up should do with the secrets found in the database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretReconciliation {
    /// The state's secrets that are still in the database.
    pub keep: Vec<SharedSecret>,
    /// Agent secrets to delete now: unknown to the state file (never used
    /// to sign, since persisting comes before signing) or past their time.
    pub delete_now: Vec<Secret>,
}

pub fn reconcile_secrets(
    state_secrets: &[SharedSecret],
    database: &[Secret],
    now: u64,
    grace: u64,
    have_state: bool,
) -> SecretReconciliation {
    let mut result = SecretReconciliation::default();
    for value in database {
        if secret_created_at(value.expose()).is_none() {
            continue;
        }
        match state_secrets.iter().find(|known| &known.value == value) {
            Some(known) if deletion_due(known, grace).is_some_and(|due| due <= now) => {
                result.delete_now.push(value.clone())
            }
            Some(known) => result.keep.push(known.clone()),
            None if have_state => result.delete_now.push(value.clone()),
            None => {}
        }
    }
    result
}

/// The secrets to keep after a reconciliation: `keep` plus those whose
/// deletion failed, due for deletion at once (the state's own entry when it
/// has one), so none leaves the state before a listing confirms it gone.
pub fn with_undeleted(
    mut keep: Vec<SharedSecret>,
    state_secrets: &[SharedSecret],
    undeleted: &[Secret],
    now: u64,
    grace: u64,
) -> Vec<SharedSecret> {
    for value in undeleted {
        if keep.iter().any(|kept| &kept.value == value) {
            continue;
        }
        let known = state_secrets.iter().find(|known| &known.value == value);
        keep.push(known.cloned().unwrap_or_else(|| SharedSecret {
            value: value.clone(),
            created_at: secret_created_at(value.expose()).unwrap_or(0),
            retired_until: Some(now.saturating_sub(grace)),
        }));
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: &str, created_at: u64, retired_until: Option<u64>) -> SharedSecret {
        SharedSecret {
            value: Secret::new(value),
            created_at,
            retired_until,
        }
    }

    #[test]
    fn mint_matches_coturns_formula() {
        // base64(HMAC-SHA1("north", "1700000000:alice")), computed with
        // `printf %s 1700000000:alice | openssl dgst -sha1 -hmac north -binary | base64`.
        let (username, password) = mint(&Secret::new("north"), "alice", 1_700_000_000);
        assert_eq!(username, "1700000000:alice");
        assert_eq!(password.expose(), "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    }

    #[test]
    fn safe_users() {
        assert!(is_safe_user("alice-1.2@x_y"));
        for bad in ["", "a:b", "a b", "a/b", &"x".repeat(65), "ä"] {
            assert!(!is_safe_user(bad), "{bad}");
        }
    }

    #[test]
    fn ttl_is_capped() {
        assert_eq!(effective_ttl(None, 3600, 86400), 3600);
        assert_eq!(effective_ttl(Some(600), 3600, 86400), 600);
        assert_eq!(effective_ttl(Some(10_000_000), 3600, 86400), 86400);
        assert_eq!(effective_ttl(Some(0), 3600, 86400), 1);
    }

    #[test]
    fn rotation_keeps_old_secrets_for_max_ttl() {
        let mut secrets = vec![secret("a", 100, None)];
        assert_eq!(rotation_due(&secrets, 50), 150);
        rotate(&mut secrets, secret("b", 150, None), 150, 1000);
        assert_eq!(signing_secret(&secrets).unwrap().value, Secret::new("b"));
        assert_eq!(secrets[0].retired_until, Some(1150));
        assert_eq!(deletion_due(&secrets[0], 60), Some(1210));
        assert_eq!(deletion_due(&secrets[1], 60), None);
        assert_eq!(rotation_due(&[], 50), 0);
    }

    #[test]
    fn reconcile_deletes_unknown_and_overdue_agent_secrets_only() {
        let state = vec![
            secret("ta1s-1-old", 1, Some(500)),
            secret("ta1s-2-cur", 2, None),
            secret("ta1s-3-lost", 3, None),
        ];
        let database: Vec<Secret> = [
            "operator-secret",
            "ta1s-1-old",
            "ta1s-2-cur",
            "ta1s-9-unknown",
        ]
        .into_iter()
        .map(Secret::new)
        .collect();
        let result = reconcile_secrets(&state, &database, 1000, 60, true);
        assert_eq!(result.keep, vec![state[1].clone()]);
        assert_eq!(
            result.delete_now,
            vec![Secret::new("ta1s-1-old"), Secret::new("ta1s-9-unknown")]
        );
        let kept = with_undeleted(
            result.keep.clone(),
            &state,
            &[Secret::new("ta1s-1-old"), Secret::new("ta1s-9-unknown")],
            1000,
            60,
        );
        assert_eq!(kept[1], state[0]);
        assert_eq!(kept[2].retired_until, Some(940));
        assert!(kept[1..]
            .iter()
            .all(|secret| deletion_due(secret, 60).is_some_and(|due| due <= 1000)));
        let without_state = reconcile_secrets(&[], &database, 1000, 60, false);
        assert!(without_state.delete_now.is_empty());
    }
}
