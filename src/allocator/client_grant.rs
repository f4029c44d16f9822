//! What a signalling server hands a browser in one step: the TURN host it
//! just picked (`restAddr`, where the browser fetches `/ice`) and a
//! short-lived client token for exactly that host (its audience is the
//! host's `restAddr`, the default audience an agent checks).
//!
//! The signalling server holds the Ed25519 private key; TURN hosts hold the
//! public key in `access.client_tokens.public_key_files`. Needs the
//! `client-tokens` feature (the JWT signer), which the default `agent`
//! feature includes; a signalling server takes it without the agent:
//! `default-features = false, features = ["allocator", "client-tokens"]`.
//!
//! ```no_run
//! # async fn example(browser_user: &str) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use turn_agent::allocator::client_grant::ClientTokenMinter;
//! use turn_agent::allocator::{Allocator, AllocatorSettings, Preference};
//!
//! let allocator = Allocator::start(AllocatorSettings::new("zk1:2181/turn", "/turn/servers")).await?;
//! let minter = ClientTokenMinter::from_pem(
//!     &std::fs::read("/etc/signalling/client-token-key.pem")?,
//!     Duration::from_secs(120),
//! )?;
//! // Per browser session: a host and a token for it, as JSON for the page.
//! let grant = minter.pick(&allocator, &Preference::default(), Some(browser_user))?;
//! let json = serde_json::to_string(&grant)?; // {"restAddr":…,"token":…,"expiresAt":…}
//! // The page then calls fetch(`http://${restAddr}/ice?policy=relay`,
//! //   { headers: { Authorization: `Bearer ${token}` } }).
//! # let _ = json; Ok(()) }
//! ```

use std::time::Duration;

use jsonwebtoken::EncodingKey;
use serde::Serialize;

use super::{AllocError, Allocator, Host, Preference};
use crate::client_token::{mint_with, MintError};

/// A host and a token for it, serialised in camelCase for a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientGrant {
    /// The host's znode name (for logs; the page does not need it).
    pub node: String,
    /// `host:port` of the host's API, where the browser fetches `/ice`.
    pub rest_addr: String,
    /// The client token (`Authorization: Bearer …`); never log it.
    pub token: String,
    /// Seconds since the epoch when the token expires.
    pub expires_at: u64,
}

/// Why no grant was made.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Pick(#[from] AllocError),
    #[error(transparent)]
    Mint(#[from] MintError),
}

/// Signs client tokens with one private key and one lifetime.
pub struct ClientTokenMinter {
    key: EncodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for ClientTokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTokenMinter")
            .field("key", &"***")
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl ClientTokenMinter {
    /// An Ed25519 private key in PEM (PKCS#8) form; `ttl` is how long each
    /// token lives (at most the hosts' `max_lifetime`, 10 minutes by
    /// default, or they refuse it).
    pub fn from_pem(private_key_pem: &[u8], ttl: Duration) -> Result<Self, MintError> {
        let key = EncodingKey::from_ed_pem(private_key_pem).map_err(MintError::Key)?;
        Ok(ClientTokenMinter { key, ttl })
    }

    /// A token for `host` naming `subject` (the REST username's user part
    /// on the host), valid from `now` (seconds since the epoch).
    pub fn grant(
        &self,
        host: &Host,
        subject: Option<&str>,
        now: u64,
    ) -> Result<ClientGrant, MintError> {
        let token = mint_with(&self.key, &host.payload.rest_addr, subject, self.ttl, now)?;
        Ok(ClientGrant {
            node: host.node.clone(),
            rest_addr: host.payload.rest_addr.clone(),
            token,
            expires_at: now.saturating_add(self.ttl.as_secs()),
        })
    }

    /// Picks a host as [`Allocator::pick`] does and grants a token for it.
    pub fn pick(
        &self,
        allocator: &Allocator,
        preference: &Preference,
        subject: Option<&str>,
    ) -> Result<ClientGrant, GrantError> {
        let host = allocator.pick(preference)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Ok(self.grant(&host, subject, now)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_token::test_keys;

    fn host() -> Host {
        Host {
            node: "turn-1".into(),
            payload: crate::znode::HostPayload {
                free_traffic: 812.4,
                rest_addr: "192.0.2.10:8086".into(),
                turn_uris: vec!["turn:192.0.2.10:3478?transport=udp".into()],
                realm: "example.org".into(),
                capacity_mbps: 1000.0,
                region: String::new(),
                isp: Vec::new(),
                updated_at: String::new(),
                version: String::new(),
                restarts: 0,
                allocations: None,
            },
        }
    }

    #[test]
    fn a_grant_is_a_token_the_picked_host_accepts_and_no_other() {
        let (private, public) = test_keys::key_pair();
        let minter = ClientTokenMinter::from_pem(&private, Duration::from_secs(120)).unwrap();
        let host = host();
        let now = 1_900_000_000;
        let grant = minter.grant(&host, Some("alice"), now).unwrap();
        assert_eq!(grant.rest_addr, host.payload.rest_addr);
        assert_eq!(grant.expires_at, now + 120);
        let json = serde_json::to_value(&grant).unwrap();
        assert_eq!(json["restAddr"], host.payload.rest_addr.as_str());
        assert!(json["token"].is_string());
        let verify = |audience: &str| {
            crate::client_token::ClientTokenVerifier::new(
                std::slice::from_ref(&public),
                audience.into(),
                Duration::from_secs(600),
            )
            .unwrap()
            .verify(&grant.token, now + 1)
        };
        let verified = verify(&host.payload.rest_addr).unwrap();
        assert_eq!(verified.subject.as_deref(), Some("alice"));
        assert!(verify("192.0.2.99:8086").is_err());
        // A subject coturn would not take is refused, not rewritten.
        assert!(matches!(
            minter.grant(&host, Some("a:b"), now),
            Err(MintError::BadSubject)
        ));
        assert!(!format!("{minter:?}").contains("PRIVATE"));
    }
}
