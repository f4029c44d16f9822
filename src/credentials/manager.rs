//! The credential task: reconcile at start, rotate on schedule or demand,
//! delete after expiry plus grace, publish what may be served.
//!
//! Order of every change: turnadmin writes and confirms, the state file is
//! persisted, and only then is the new credential published. A crash between
//! any two steps leaves nothing served that coturn would reject, and every
//! agent entry in the database is either in the state file or recognisably
//! never served (deleted at the next start).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state_file::{self, CredentialState, SharedSecret, STATE_VERSION};
use super::turnadmin::{Launcher, Turnadmin};
use super::userdb::{UserDb, UserDbError};
use super::{
    long_term, naming, rest_api, unix_now, CredentialSource, CredentialStatus, Published,
    RotateError, RotateHandle, RotateReply, Rotated,
};
use crate::backoff::ExponentialBackoff;
use crate::config::{self, Config, ConfigWatch, CredentialMode, CredentialsConfig};
use crate::secret::Secret;

/// Why one step against the credential stores (turnadmin, the SQLite user
/// database, the state file) failed; its text is what operators see.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("REST API mode needs an SQLite user database (credentials.database_args)")]
    NoUserDb,
    #[error("{0}")]
    UserDb(#[from] UserDbError),
    #[error("user database call panicked: {0}")]
    Panicked(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Turnadmin(#[from] super::turnadmin::TurnadminError),
    #[error("{0}")]
    StateFile(#[from] state_file::StateFileError),
    #[error("{0}")]
    LiveSecrets(RotateError),
}

/// turnadmin can find the database locked while turnserver initialises it,
/// so the first retry comes soon.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Failed deletions of expired entries are retried from 1 s, doubling up to
/// a minute: an expired credential that still allocates must not wait long.
const DELETE_RETRY_MIN: Duration = Duration::from_secs(1);
const DELETE_RETRY_MAX: Duration = Duration::from_secs(60);

pub struct CredentialManager {
    /// Timing applies at once; a new realm, mode or database retires every
    /// agent entry and starts afresh (the agent sends those only once
    /// turnserver is being replaced).
    config_watch: ConfigWatch,
    /// The configuration last applied, to compare the next one with; its
    /// realm is the one the state and turnadmin work in.
    applied: Arc<Config>,
    turnadmin: Turnadmin,
    launcher: Launcher,
    /// The SQLite user database, when turnadmin's flags name one: REST API
    /// secrets go there directly, never on a command line.
    userdb: Option<UserDb>,
    /// The last successful `POST /rotate`, for its throttle.
    last_on_demand: Option<Instant>,
    published: Arc<ArcSwapOption<Published>>,
    status: watch::Sender<CredentialStatus>,
    rotate_requests: mpsc::Receiver<RotateReply>,
    state: CredentialState,
    reconciled: bool,
    retry: ExponentialBackoff,
    retry_at: Option<Instant>,
    deletion_retry: ExponentialBackoff,
    deletion_retry_at: Option<Instant>,
}

/// The manager's outputs, for the API and readiness.
pub struct CredentialHandles {
    pub source: CredentialSource,
    pub status: watch::Receiver<CredentialStatus>,
    pub rotate: RotateHandle,
}

impl CredentialManager {
    pub fn new(mut config_watch: ConfigWatch) -> (CredentialManager, CredentialHandles) {
        let config = config_watch.borrow_and_update().clone();
        let credentials = &config.credentials;
        let published = Arc::new(ArcSwapOption::empty());
        let (status, status_receiver) = watch::channel(CredentialStatus {
            realm: config.turnserver.realm.clone(),
            ..CredentialStatus::new(credentials.mode)
        });
        let (requests, rotate_requests) = mpsc::channel(8);
        let source = CredentialSource {
            published: published.clone(),
        };
        // `credentials.state_file` needs an agent restart, so the state
        // directory (the children's private working directory) is fixed.
        let work_dir = credentials
            .state_file
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        // Without its own thread no child could be tied to the agent.
        let launcher =
            Launcher::start(work_dir).expect("cannot start the turnadmin spawner thread");
        let manager = CredentialManager {
            config_watch,
            launcher: launcher.clone(),
            turnadmin: Turnadmin::new(
                launcher,
                credentials.turnadmin.clone(),
                credentials.database_args.clone(),
                config.turnserver.realm.clone(),
            ),
            userdb: userdb_of(&config),
            last_on_demand: None,
            applied: config,
            published,
            status,
            rotate_requests,
            state: CredentialState::default(),
            reconciled: false,
            retry: ExponentialBackoff::new(RETRY_MIN, RETRY_MAX)
                .expect("constant bounds are valid"),
            retry_at: None,
            deletion_retry: ExponentialBackoff::new(DELETE_RETRY_MIN, DELETE_RETRY_MAX)
                .expect("constant bounds are valid"),
            deletion_retry_at: None,
        };
        let handles = CredentialHandles {
            source,
            status: status_receiver,
            rotate: RotateHandle { requests },
        };
        (manager, handles)
    }

    #[tracing::instrument(name = "credentials", skip_all)]
    pub async fn run(mut self, shutdown: CancellationToken) {
        let have_state = self.load_state();
        for path in self.launcher.sweep_leftovers() {
            tracing::info!(path = %path.display(), "removed the log file of a turnadmin call cut short by an earlier agent");
        }
        self.prepare_userdb().await;
        loop {
            let now = unix_now().as_secs();
            let retry_due = self.retry_at.is_none_or(|at| Instant::now() >= at);
            if !self.reconciled && retry_due {
                self.reconcile(now, have_state).await;
            }
            let retry_due = self.retry_at.is_none_or(|at| Instant::now() >= at);
            if self.reconciled && retry_due && self.rotation_due() <= now {
                let _ = self.rotate(now).await;
            }
            // turnadmin calls above can take seconds on a busy host: an
            // expired credential is judged by the time now, not at the top.
            let now = unix_now().as_secs();
            self.delete_due(now).await;
            self.expire_current(now);
            self.publish_status();

            let wake = self.next_wake(now);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
                latest = config::next_config(&mut self.config_watch) => self.apply(latest).await,
                Some(request) = self.rotate_requests.recv() => {
                    let result = self
                        .rotate_on_demand(request.is_repair(), request.is_revoke())
                        .await;
                    self.publish_status();
                    let _ = request.send(result);
                }
            }
        }
    }

    /// Takes a reloaded configuration. `credentials.state_file` is an
    /// agent-restart key, so a reload never moves the state file.
    async fn apply(&mut self, config: Arc<Config>) {
        let fresh_start = super::needs_fresh_start(&self.applied, &config);
        if fresh_start {
            self.retire_everything().await;
        }
        self.turnadmin = Turnadmin::new(
            self.launcher.clone(),
            config.credentials.turnadmin.clone(),
            config.credentials.database_args.clone(),
            config.turnserver.realm.clone(),
        );
        let new_userdb = userdb_of(&config);
        let userdb_moved =
            new_userdb.as_ref().map(UserDb::path) != self.userdb.as_ref().map(UserDb::path);
        self.userdb = new_userdb;
        self.applied = config;
        if userdb_moved {
            self.prepare_userdb().await;
        }
        if fresh_start {
            tracing::info!(realm = %self.realm(), mode = ?self.config().mode, "starting a new credential state for the new turnserver");
            self.fresh_state();
            self.reconciled = false;
            self.retry.reset();
            self.retry_at = None;
            let (mode, realm) = (self.config().mode, self.realm().to_string());
            self.status.send_modify(|status| {
                status.mode = mode;
                status.realm = realm;
                status.generation += 1;
            });
        }
        self.publish_current();
    }

    fn config(&self) -> &CredentialsConfig {
        &self.applied.credentials
    }

    fn realm(&self) -> &str {
        &self.applied.turnserver.realm
    }

    /// Takes every agent entry out of the database the running turnserver
    /// used: the new one will not know them. Best effort: a leftover is
    /// harmless to the new realm or database.
    async fn retire_everything(&mut self) {
        self.published.store(None);
        let users = self.state.current.iter().map(|c| c.username.clone());
        for user in users.chain(self.state.served.iter().cloned()) {
            if let Err(error) = self.turnadmin.delete_user(&user).await {
                tracing::warn!(user, %error, "cannot delete an agent user of the previous configuration");
            }
        }
        for secret in self.state.secrets.clone() {
            if let Err(error) = self.delete_secret(secret.value).await {
                tracing::warn!(%error, "cannot delete an agent secret of the previous configuration");
            }
        }
    }

    /// Creates the SQLite user database private and in WAL mode, or makes
    /// an existing one so. A failure is logged; the calls that need the
    /// database report it again.
    async fn prepare_userdb(&self) {
        let Some(userdb) = self.userdb.clone() else {
            return;
        };
        let path = userdb.path().display().to_string();
        match tokio::task::spawn_blocking(move || userdb.prepare()).await {
            Ok(Ok(())) => tracing::debug!(path, "user database is private and in WAL mode"),
            Ok(Err(error)) => tracing::error!(%error, "cannot prepare the user database"),
            Err(error) => tracing::error!(%error, "user database preparation panicked"),
        }
    }

    /// Runs `call` on the SQLite user database off the async threads.
    async fn on_userdb<T: Send + 'static>(
        &self,
        call: impl FnOnce(&UserDb) -> Result<T, UserDbError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let userdb = self.userdb.clone().ok_or(StoreError::NoUserDb)?;
        Ok(tokio::task::spawn_blocking(move || call(&userdb)).await??)
    }

    async fn list_secrets(&self) -> Result<Vec<Secret>, StoreError> {
        self.on_userdb(|db| db.list_secrets()).await
    }

    async fn add_secret(&self, secret: Secret) -> Result<(), StoreError> {
        self.on_userdb(move |db| db.add_secret(&secret)).await
    }

    async fn delete_secret(&self, secret: Secret) -> Result<(), StoreError> {
        self.on_userdb(move |db| db.delete_secret(&secret)).await
    }

    /// Loads the state file. A missing one is created empty at once, so
    /// that from then on every agent entry the file does not know is one
    /// that was never served. Returns whether a state was known before.
    fn load_state(&mut self) -> bool {
        for directory in [self.config().state_file.parent()].into_iter().flatten() {
            if let Err(error) = create_private_dir(directory) {
                tracing::warn!(%error, directory = %directory.display(), "cannot create the state directory");
            }
        }
        match state_file::load(&self.config().state_file) {
            Ok(Some(state)) if state.realm == self.realm() => {
                self.state = state;
                true
            }
            Ok(Some(state)) => {
                tracing::warn!(old = %state.realm, new = %self.realm(), "realm changed; starting a new credential state");
                self.fresh_state();
                false
            }
            Ok(None) => {
                self.fresh_state();
                false
            }
            Err(error) => {
                tracing::error!(%error, "ignoring the credential state file");
                self.fresh_state();
                false
            }
        }
    }

    fn fresh_state(&mut self) {
        self.state = CredentialState {
            version: STATE_VERSION,
            realm: self.realm().to_string(),
            ..CredentialState::default()
        };
        if let Err(error) = state_file::store(&self.config().state_file, &self.state) {
            tracing::error!(%error, "cannot write the credential state file");
        }
    }

    /// Start-up: align the state file with the database.
    async fn reconcile(&mut self, now: u64, have_state: bool) {
        let grace = self.config().grace.as_secs();
        let result = match self.config().mode {
            CredentialMode::LongTerm => self.reconcile_users(now, have_state, grace).await,
            CredentialMode::RestApi => self.reconcile_secrets(now, have_state, grace).await,
        };
        match result {
            Ok(()) => {
                self.reconciled = true;
                self.succeeded();
                self.publish_current();
            }
            Err(error) => {
                // Serve what was persisted if it is still valid: it was
                // confirmed in the database when it was created.
                self.publish_current();
                self.failed(format!("cannot reconcile the credential database: {error}"));
            }
        }
    }

    async fn reconcile_users(
        &mut self,
        now: u64,
        have_state: bool,
        grace: u64,
    ) -> Result<(), StoreError> {
        let users = self.turnadmin.list_users().await?;
        let plan = long_term::reconcile(have_state.then_some(&self.state), &users, now, grace);
        let mut undeleted = Vec::new();
        for user in &plan.delete_now {
            match self.turnadmin.delete_user(user).await {
                Ok(()) => tracing::info!(user, "deleted a stale agent user"),
                Err(error) => {
                    tracing::warn!(user, %error, "cannot delete a stale agent user; it stays in the state file and is retried");
                    undeleted.push(user.clone());
                }
            }
        }
        let mut next = self.state.clone();
        next.current = plan.resume.clone();
        // A user whose deletion failed stays in the state until a listing
        // confirms it gone, so the next round (or the next start) retries.
        next.served = long_term::with_undeleted(plan.keep, undeleted.clone());
        self.persist(next)?;
        self.deletions_attempted(undeleted.len());
        if let Some(current) = &plan.resume {
            tracing::info!(user = %current.username, expires_at = current.expires_at, "resuming the persisted credential");
        }
        Ok(())
    }

    async fn reconcile_secrets(
        &mut self,
        now: u64,
        have_state: bool,
        grace: u64,
    ) -> Result<(), StoreError> {
        let secrets = self.list_secrets().await?;
        let plan =
            rest_api::reconcile_secrets(&self.state.secrets, &secrets, now, grace, have_state);
        let mut undeleted = Vec::new();
        for secret in &plan.delete_now {
            if let Err(error) = self.delete_secret(secret.clone()).await {
                let created_at = naming::secret_created_at(secret.expose());
                tracing::warn!(?created_at, %error, "cannot delete a stale agent secret; it stays in the state file and is retried");
                undeleted.push(secret.clone());
            }
        }
        let mut next = self.state.clone();
        next.secrets =
            rest_api::with_undeleted(plan.keep, &self.state.secrets, &undeleted, now, grace);
        self.persist(next)?;
        self.deletions_attempted(undeleted.len());
        Ok(())
    }

    /// Schedules the next deletion round: soon after a success, with
    /// exponential backoff after `failed` deletions.
    fn deletions_attempted(&mut self, failed: usize) {
        if failed == 0 {
            self.deletion_retry.reset();
            self.deletion_retry_at = None;
            return;
        }
        let delay = self.deletion_retry.next_delay();
        self.deletion_retry_at = Some(Instant::now() + delay);
        self.status.send_modify(|status| {
            status.deletion_failures = status.deletion_failures.saturating_add(failed as u64);
        });
    }

    fn rotation_due(&self) -> u64 {
        let interval = self.config().rotate_interval.as_secs();
        match self.config().mode {
            CredentialMode::LongTerm => {
                long_term::rotation_due(self.state.current.as_ref(), interval)
            }
            CredentialMode::RestApi => rest_api::rotation_due(&self.state.secrets, interval),
        }
    }

    /// `POST /rotate` (throttled) or a self-check repair (not throttled:
    /// the self-check backs off). Both respect the bound on live secrets.
    ///
    /// A revoke (long-term mode only) then deletes every earlier agent
    /// user at once, without a grace period.
    async fn rotate_on_demand(
        &mut self,
        repair: bool,
        revoke: bool,
    ) -> Result<Rotated, RotateError> {
        if revoke && self.config().mode != CredentialMode::LongTerm {
            return Err(RotateError::RevokeNeedsLongTerm);
        }
        if !self.reconciled {
            return Err(RotateError::Failed(
                "the credential database has not been reconciled yet".into(),
            ));
        }
        let min_interval = self.config().rotate_min_interval;
        if let Some(last) = self
            .last_on_demand
            .filter(|_| !repair && !min_interval.is_zero())
        {
            let allowed_at = last + min_interval;
            let now = Instant::now();
            if now < allowed_at {
                return Err(RotateError::Throttled {
                    min_interval,
                    retry_after_secs: (allowed_at - now).as_secs_f64().ceil().max(1.0) as u64,
                });
            }
        }
        let now = unix_now().as_secs();
        self.live_secret_bound(now)?;
        // Every agent user known before the rotation: the one served until
        // now and those still in their grace period.
        let earlier: Vec<String> = self
            .state
            .current
            .iter()
            .map(|current| current.username.clone())
            .chain(self.state.served.iter().cloned())
            .collect();
        let credential = self.rotate(now).await?;
        if !repair {
            self.last_on_demand = Some(Instant::now());
        }
        let mut rotated = Rotated::to(credential);
        if revoke {
            for user in earlier {
                match self.turnadmin.delete_user(&user).await {
                    Ok(()) => {
                        let mut next = self.state.clone();
                        next.served.retain(|served| served != &user);
                        if let Err(error) = self.persist(next) {
                            // Deleted but still in the state file: the next
                            // deletion round finds it gone.
                            tracing::warn!(user, %error, "revoked a user but cannot persist that");
                        }
                        tracing::warn!(user, "revoked: deleted without a grace period");
                        rotated.revoked.push(user);
                    }
                    Err(error) => {
                        tracing::error!(user, %error, "cannot revoke a user; it is deleted when due");
                        rotated.not_revoked.push((user, error.to_string()));
                    }
                }
            }
            self.publish_status();
        }
        Ok(rotated)
    }

    /// REST API mode: refuses a new secret while `max_live_secrets` are
    /// live; retry when the first retired one is due for deletion.
    fn live_secret_bound(&self, now: u64) -> Result<(), RotateError> {
        let live = self.state.secrets.len();
        if self.config().mode != CredentialMode::RestApi || live < self.config().max_live_secrets {
            return Ok(());
        }
        let grace = self.config().grace.as_secs();
        let first_due = self
            .state
            .secrets
            .iter()
            .filter_map(|secret| rest_api::deletion_due(secret, grace))
            .min()
            .unwrap_or(now);
        Err(RotateError::TooManyLive {
            live,
            retry_after_secs: first_due.saturating_sub(now).max(1),
        })
    }

    /// Creates, confirms, persists, then publishes a new credential.
    async fn rotate(&mut self, now: u64) -> Result<String, RotateError> {
        let result = match self.config().mode {
            CredentialMode::LongTerm => self.rotate_user(now).await,
            CredentialMode::RestApi => match self.live_secret_bound(now) {
                Ok(()) => self.rotate_secret(now).await,
                Err(error) => Err(StoreError::LiveSecrets(error)),
            },
        };
        match &result {
            Ok(name) => {
                self.succeeded();
                self.status.send_modify(|status| status.rotations += 1);
                self.publish_current();
                tracing::info!(credential = %name, "credential rotated");
            }
            Err(error) => self.failed(format!("rotation failed: {error}")),
        }
        result.map_err(|error| RotateError::Failed(error.to_string()))
    }

    async fn rotate_user(&mut self, now: u64) -> Result<String, StoreError> {
        let credential = long_term::issue(now, self.config().lifetime.as_secs());
        self.turnadmin
            .add_user(&credential.username, &credential.password)
            .await?;
        let mut next = self.state.clone();
        if let Some(previous) = next.current.replace(credential.clone()) {
            next.served.push(previous.username);
        }
        if let Err(error) = self.persist(next) {
            // Never serve what is not persisted: take the user out again.
            let _ = self.turnadmin.delete_user(&credential.username).await;
            return Err(error);
        }
        Ok(credential.username)
    }

    async fn rotate_secret(&mut self, now: u64) -> Result<String, StoreError> {
        let secret = SharedSecret {
            value: naming::new_shared_secret(now),
            created_at: now,
            retired_until: None,
        };
        self.add_secret(secret.value.clone()).await?;
        let mut next = self.state.clone();
        rest_api::rotate(
            &mut next.secrets,
            secret.clone(),
            now,
            self.config().max_ttl.as_secs(),
        );
        if let Err(error) = self.persist(next) {
            let _ = self.delete_secret(secret.value.clone()).await;
            return Err(error);
        }
        Ok(format!("shared secret created at {now}"))
    }

    /// Deletes agent entries whose expiry plus grace has passed.
    async fn delete_due(&mut self, now: u64) {
        if self.deletion_retry_at.is_some_and(|at| Instant::now() < at) || !self.reconciled {
            return;
        }
        let grace = self.config().grace.as_secs();
        let mut failed = 0;
        let due_users: Vec<String> = self
            .state
            .served
            .iter()
            .filter(|user| long_term::deletion_due(user, grace).is_none_or(|due| due <= now))
            .cloned()
            .collect();
        for user in due_users {
            match self.turnadmin.delete_user(&user).await {
                Ok(()) => {
                    let mut next = self.state.clone();
                    next.served.retain(|served| served != &user);
                    failed += usize::from(self.persist(next).is_err());
                    tracing::info!(user, "deleted an expired credential");
                }
                Err(error) => {
                    tracing::warn!(user, %error, "cannot delete an expired credential; it still allocates until a retry succeeds");
                    failed += 1;
                }
            }
        }
        let due_secrets: Vec<SharedSecret> = self
            .state
            .secrets
            .iter()
            .filter(|secret| rest_api::deletion_due(secret, grace).is_some_and(|due| due <= now))
            .cloned()
            .collect();
        for secret in due_secrets {
            match self.delete_secret(secret.value.clone()).await {
                Ok(()) => {
                    let mut next = self.state.clone();
                    next.secrets.retain(|kept| kept.value != secret.value);
                    failed += usize::from(self.persist(next).is_err());
                    tracing::info!(
                        created_at = secret.created_at,
                        "deleted a retired shared secret"
                    );
                }
                Err(error) => {
                    tracing::warn!(created_at = secret.created_at, %error, "cannot delete a retired shared secret; it is retried");
                    failed += 1;
                }
            }
        }
        self.deletions_attempted(failed);
    }

    /// A long-term credential past its expiry is no longer served, and its
    /// user is scheduled for deletion like any served one.
    fn expire_current(&mut self, now: u64) {
        let Some(current) = &self.state.current else {
            return;
        };
        if current.expires_at > now {
            return;
        }
        tracing::error!(user = %current.username, "the served credential expired before a rotation succeeded");
        let mut next = self.state.clone();
        if let Some(expired) = next.current.take() {
            next.served.push(expired.username);
        }
        let _ = self.persist(next);
        self.publish_current();
    }

    fn persist(&mut self, next: CredentialState) -> Result<(), StoreError> {
        state_file::store(&self.config().state_file, &next)?;
        self.state = next;
        Ok(())
    }

    fn publish_current(&self) {
        let now = unix_now().as_secs();
        let published = match self.config().mode {
            CredentialMode::LongTerm => self
                .state
                .current
                .clone()
                .filter(|current| current.expires_at > now)
                .map(Published::LongTerm),
            CredentialMode::RestApi => {
                rest_api::signing_secret(&self.state.secrets).map(|secret| Published::RestApi {
                    secret: secret.value.clone(),
                    default_ttl: self.config().lifetime.as_secs(),
                    max_ttl: self.config().max_ttl.as_secs(),
                })
            }
        };
        self.published.store(published.map(Arc::new));
    }

    fn succeeded(&mut self) {
        self.retry.reset();
        self.retry_at = None;
        self.status.send_modify(|status| {
            status.consecutive_failures = 0;
            status.last_error = None;
        });
    }

    fn failed(&mut self, message: String) {
        let delay = self.retry.next_delay();
        self.retry_at = Some(Instant::now() + delay);
        tracing::error!(error = %message, retry_in_ms = delay.as_millis() as u64, "credential operation failed");
        self.status.send_modify(|status| {
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            status.failures = status.failures.saturating_add(1);
            status.last_error = Some(message);
        });
    }

    fn publish_status(&self) {
        let available = self.published.load().is_some();
        let current = self.state.current.clone();
        let next_rotation_at = self.reconciled.then(|| self.rotation_due());
        let live_in_database = match self.config().mode {
            CredentialMode::LongTerm => self.state.served.len() + usize::from(current.is_some()),
            CredentialMode::RestApi => self.state.secrets.len(),
        };
        let now = unix_now().as_secs();
        let grace = self.config().grace.as_secs();
        let pending_deletions = self
            .state
            .served
            .iter()
            .filter(|user| long_term::deletion_due(user, grace).is_none_or(|due| due <= now))
            .count()
            + self
                .state
                .secrets
                .iter()
                .filter(|secret| {
                    rest_api::deletion_due(secret, grace).is_some_and(|due| due <= now)
                })
                .count();
        self.status.send_if_modified(|status| {
            let before = status.clone();
            status.available = available;
            status.username = current.as_ref().map(|c| c.username.clone());
            status.issued_at = current.as_ref().map(|c| c.issued_at);
            status.expires_at = current.as_ref().map(|c| c.expires_at);
            status.next_rotation_at = next_rotation_at;
            status.live_in_database = live_in_database;
            status.pending_deletions = pending_deletions;
            *status != before
        });
    }

    /// The earliest of: the next rotation (or retry), the next deletion,
    /// the served credential's expiry.
    fn next_wake(&self, now: u64) -> Instant {
        let grace = self.config().grace.as_secs();
        let at_unix = |unix_secs: u64| {
            let delta = Duration::from_secs(unix_secs).saturating_sub(unix_now());
            Instant::now() + delta
        };
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if let Some(retry_at) = self.retry_at {
            wake = wake.min(retry_at);
        } else if self.reconciled {
            wake = wake.min(at_unix(self.rotation_due().max(now)));
        }
        let deletions = self
            .state
            .served
            .iter()
            .filter_map(|user| long_term::deletion_due(user, grace))
            .chain(
                self.state
                    .secrets
                    .iter()
                    .filter_map(|s| rest_api::deletion_due(s, grace)),
            );
        if let Some(first) = deletions.min() {
            let due = at_unix(first);
            wake = wake.min(self.deletion_retry_at.map_or(due, |retry| due.max(retry)));
        }
        if let Some(current) = &self.state.current {
            wake = wake.min(at_unix(current.expires_at));
        }
        wake
    }
}

fn userdb_of(config: &Config) -> Option<UserDb> {
    config
        .credentials
        .sqlite_userdb
        .clone()
        .map(|path| UserDb::new(path, config.turnserver.realm.clone()))
}

fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if path.as_os_str().is_empty() || path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
