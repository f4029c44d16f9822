//! Names and random values the agent creates in coturn's database.
//!
//! Every user and shared secret the agent creates carries a recognisable
//! prefix and its own expiry or creation time, so after any crash the agent
//! can tell its own entries from an operator's and knows when each may go,
//! without trusting its state file.

use base64::Engine;
use rand::RngCore;

use crate::secret::Secret;

/// Prefix of long-term users the agent creates: `ta1-<expiry_unix>-<random>`.
pub const USER_PREFIX: &str = "ta1-";
/// Prefix of REST API shared secrets: `ta1s-<created_unix>-<random>`.
pub const SECRET_PREFIX: &str = "ta1s-";

/// `N` bytes from a CSPRNG: rand's thread generator (ChaCha, seeded and
/// periodically reseeded from the operating system).
fn os_random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn url_safe(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new long-term username that expires at `expires_at` (unix seconds).
pub fn new_username(expires_at: u64) -> String {
    let tag: [u8; 6] = os_random_bytes();
    // Lowercase hex keeps usernames free of characters turnadmin or a
    // client might treat specially.
    let tag: String = tag.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{USER_PREFIX}{expires_at}-{tag}")
}

/// A password of 144 random bits in the URL-safe base64 alphabet (24 chars).
pub fn new_password() -> Secret {
    Secret::random_password()
}

/// A REST API shared secret with 192 random bits.
pub fn new_shared_secret(created_at: u64) -> Secret {
    Secret::new(format!(
        "{SECRET_PREFIX}{created_at}-{}",
        url_safe(&os_random_bytes::<24>())
    ))
}

/// The expiry of a username the agent created, or `None` for anyone else's.
pub fn user_expiry(username: &str) -> Option<u64> {
    parse_stamped(username, USER_PREFIX)
}

/// The creation time of a shared secret the agent created.
pub fn secret_created_at(secret: &str) -> Option<u64> {
    parse_stamped(secret, SECRET_PREFIX)
}

fn parse_stamped(value: &str, prefix: &str) -> Option<u64> {
    let rest = value.strip_prefix(prefix)?;
    let (stamp, tag) = rest.split_once('-')?;
    if tag.is_empty() || stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_carry_their_expiry() {
        let name = new_username(1_700_000_000);
        assert!(name.starts_with("ta1-1700000000-"), "{name}");
        assert_eq!(user_expiry(&name), Some(1_700_000_000));
        assert_ne!(new_username(1), new_username(1));
    }

    #[test]
    fn foreign_names_are_not_ours() {
        for name in [
            "alice",
            "ta1-",
            "ta1-abc-def",
            "ta1-123-",
            "ta2-123-abc",
            "ta1s-123-abc",
            "xta1-1-a",
        ] {
            assert_eq!(user_expiry(name), None, "{name}");
        }
    }

    #[test]
    fn passwords_are_long_and_url_safe() {
        let password = new_password();
        assert_eq!(password.expose().len(), 24);
        assert!(password
            .expose()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(new_password(), new_password());
    }

    #[test]
    fn secrets_carry_their_creation_time() {
        let secret = new_shared_secret(42);
        assert_eq!(secret_created_at(secret.expose()), Some(42));
        assert!(secret.expose().len() > 32);
        assert_eq!(user_expiry(secret.expose()), None);
    }
}
