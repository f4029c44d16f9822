//! TURN credentials: created through turnadmin, persisted before they are
//! served, rotated on a schedule, deleted after their advertised expiry.
//!
//! - `naming`: the recognisable, self-dating names of agent users and secrets.
//! - `long_term`, `rest_api`: the lifecycles as pure functions of state and time.
//! - `state_file`: crash-safe persistence.
//! - `turnadmin`: the verified shell around coturn's turnadmin.
//! - `manager`: the task that ties them together and publishes what the API
//!   serves through a [`CredentialSource`].

pub mod long_term;
mod manager;
pub mod naming;
pub mod rest_api;
pub mod state_file;
pub mod turnadmin;
pub mod userdb;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};

/// Defined in the core, so readiness and metrics need nothing of this module.
pub use crate::status::CredentialStatus;
pub use manager::{CredentialHandles, CredentialManager};

use crate::config::Config;
use crate::secret::Secret;
use state_file::LongTermCredential;

/// A credential as handed to one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCredential {
    pub username: String,
    pub password: Secret,
    /// Unix seconds.
    pub expires_at: u64,
}

/// What a client asked for; only REST API mode uses it.
#[derive(Debug, Clone, Default)]
pub struct CredentialRequest {
    pub ttl: Option<u64>,
    pub user: Option<String>,
}

/// What the manager currently publishes for the API to serve.
#[derive(Debug)]
enum Published {
    LongTerm(LongTermCredential),
    /// The TTL bounds travel with the secret so a reload changes them with
    /// one swap.
    RestApi {
        secret: Secret,
        default_ttl: u64,
        max_ttl: u64,
    },
}

/// The API's read side: a lock-free load of what the manager published.
/// Readers never see a half-updated credential: the manager swaps whole
/// values.
#[derive(Clone)]
pub struct CredentialSource {
    published: Arc<ArcSwapOption<Published>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

impl CredentialSource {
    pub fn issue(
        &self,
        request: &CredentialRequest,
        now: u64,
    ) -> Result<IssuedCredential, Unavailable> {
        let published = self.published.load();
        match published.as_deref() {
            None => Err(Unavailable("no credential has been created yet".into())),
            Some(Published::LongTerm(credential)) if credential.expires_at <= now => Err(
                Unavailable("the current credential expired and rotation is failing".into()),
            ),
            Some(Published::LongTerm(credential)) => Ok(IssuedCredential {
                username: credential.username.clone(),
                password: credential.password.clone(),
                expires_at: credential.expires_at,
            }),
            Some(Published::RestApi {
                secret,
                default_ttl,
                max_ttl,
            }) => {
                let ttl = rest_api::effective_ttl(request.ttl, *default_ttl, *max_ttl);
                let user = match request.user.as_deref() {
                    Some(user) if rest_api::is_safe_user(user) => user.to_string(),
                    _ => random_user(),
                };
                let expires_at = now.saturating_add(ttl);
                let (username, password) = rest_api::mint(secret, &user, expires_at);
                Ok(IssuedCredential {
                    username,
                    password,
                    expires_at,
                })
            }
        }
    }
}

impl CredentialSource {
    /// A source that always serves `credential` (or nothing): for embedding
    /// the router without a manager, in tests and benchmarks.
    pub fn fixed_long_term(credential: Option<LongTermCredential>) -> Self {
        CredentialSource {
            published: Arc::new(ArcSwapOption::new(
                credential.map(|c| Arc::new(Published::LongTerm(c))),
            )),
        }
    }
}

#[cfg(test)]
impl CredentialSource {
    /// A source minting REST API credentials with `secret`.
    pub(crate) fn fixed_rest_api(secret: &str, default_ttl: u64, max_ttl: u64) -> Self {
        CredentialSource {
            published: Arc::new(ArcSwapOption::new(Some(Arc::new(Published::RestApi {
                secret: Secret::new(secret),
                default_ttl,
                max_ttl,
            })))),
        }
    }
}

impl RotateHandle {
    /// A handle whose requests go to the returned receiver: for embedding
    /// the router without a manager.
    pub fn detached() -> (RotateHandle, mpsc::Receiver<RotateReply>) {
        let (requests, receiver) = mpsc::channel(1);
        (RotateHandle { requests }, receiver)
    }
}

/// Whether going from `old` to `new` leaves every agent credential useless:
/// users and secrets belong to one realm, one mode and one database.
pub fn needs_fresh_start(old: &Config, new: &Config) -> bool {
    old.turnserver.realm != new.turnserver.realm
        || old.credentials.mode != new.credentials.mode
        || old.credentials.database_args != new.credentials.database_args
}

fn random_user() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Why a rotation on demand did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    /// `credentials.rotate_min_interval` has not passed since the last
    /// `POST /rotate`.
    #[error("the credential was rotated on demand less than {min_interval:?} ago; retry in {retry_after_secs} s")]
    Throttled {
        min_interval: Duration,
        retry_after_secs: u64,
    },
    /// `credentials.max_live_secrets` secrets are live: coturn tries each one
    /// on every authentication.
    #[error("{live} shared secrets are live, the most allowed; retry in {retry_after_secs} s")]
    TooManyLive { live: usize, retry_after_secs: u64 },
    /// `POST /rotate?revoke=true` in REST API mode: its credentials are
    /// minted from a shared secret, there is no user to delete.
    #[error("revoke needs credentials.mode = \"long-term\": REST API credentials are minted from a shared secret and cannot be revoked one by one")]
    RevokeNeedsLongTerm,
    #[error("{0}")]
    Failed(String),
}

impl RotateError {
    /// Seconds after which trying again can succeed, for a 429.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            RotateError::Throttled {
                retry_after_secs, ..
            }
            | RotateError::TooManyLive {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            RotateError::RevokeNeedsLongTerm | RotateError::Failed(_) => None,
        }
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new username (long-term) or a note (REST API).
    pub credential: String,
    /// A revoke: the agent users deleted at once (the one served until now
    /// and any earlier one still in its grace period).
    pub revoked: Vec<String>,
    /// A revoke: users whose deletion failed (they stay in the state file
    /// and are deleted when due), with the reason.
    pub not_revoked: Vec<(String, String)>,
}

impl Rotated {
    /// A plain rotation to `credential`.
    pub fn to(credential: impl Into<String>) -> Rotated {
        Rotated {
            credential: credential.into(),
            revoked: Vec::new(),
            not_revoked: Vec::new(),
        }
    }
}

/// One rotation request and where its outcome goes.
pub struct RotateReply {
    reply: oneshot::Sender<Result<Rotated, RotateError>>,
    /// A repair after coturn rejected the served credential: it has its own
    /// backoff (in the self-check) instead of the on-demand throttle.
    repair: bool,
    /// Delete every earlier agent user at once, without a grace period.
    revoke: bool,
}

impl RotateReply {
    /// Sends the outcome; `Err` gives it back when the asker is gone.
    pub fn send(
        self,
        result: Result<Rotated, RotateError>,
    ) -> Result<(), Result<Rotated, RotateError>> {
        self.reply.send(result)
    }

    pub fn is_repair(&self) -> bool {
        self.repair
    }

    pub fn is_revoke(&self) -> bool {
        self.revoke
    }
}

/// Asks the manager to rotate now (`POST /rotate`, self-check repairs).
#[derive(Clone)]
pub struct RotateHandle {
    requests: mpsc::Sender<RotateReply>,
}

impl RotateHandle {
    /// Rotates on demand (throttled) and returns the new username
    /// (long-term) or a note (REST API).
    pub async fn rotate(&self) -> Result<String, RotateError> {
        Ok(self.request(false, false).await?.credential)
    }

    /// Rotates on demand (throttled like [`RotateHandle::rotate`]) and
    /// deletes every earlier agent user at once (long-term mode only). The
    /// caller ends their sessions: coturn keeps relaying allocations made
    /// before a user was deleted.
    pub async fn revoke(&self) -> Result<Rotated, RotateError> {
        self.request(false, true).await
    }

    /// Rotates to repair a credential coturn rejected; not throttled (the
    /// caller backs off).
    pub async fn repair(&self) -> Result<String, RotateError> {
        Ok(self.request(true, false).await?.credential)
    }

    async fn request(&self, repair: bool, revoke: bool) -> Result<Rotated, RotateError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(RotateReply {
                reply,
                repair,
                revoke,
            })
            .await
            .map_err(|_| RotateError::Failed("the credential manager is not running".into()))?;
        answer
            .await
            .map_err(|_| RotateError::Failed("the credential manager stopped".into()))?
    }
}

pub use crate::time::unix_now;
