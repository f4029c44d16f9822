//! Publishes this host as an EPHEMERAL znode while it can serve.
//!
//! The node exists exactly while turnserver is ready and a valid credential
//! exists; it is deleted within moments of either going away, re-created
//! after a lost session, and deleted first at shutdown. Writes happen only
//! when free traffic moved by more than the hysteresis or `max_silence`
//! passed, to spare the ensemble.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::backoff::ExponentialBackoff;
use crate::config::{self, Config, ConfigWatch, TrafficConfig, ZookeeperConfig};
use crate::publish_rules::{self, HostFacts, NodeAction, Ownership, PublishRule, Wanted, Written};
use crate::readiness::Readiness;
use crate::traffic_sampler::{CounterSource, TrafficSampler};
use crate::znode::HostPayload;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Capped low so a returning ensemble sees the node again within ~2 s.
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Upper bound on the shutdown deletion.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

pub use crate::status::RegistryStatus;

pub struct Registry {
    /// The configuration in effect. Traffic settings, capacity, region,
    /// ISPs and publishing cadence change with a reload; the ensemble and
    /// node path are agent-restart keys, so `hosts` and the paths below
    /// stay right.
    applied: Arc<Config>,
    config_watch: ConfigWatch,
    hosts: String,
    node_path: String,
    base_path: String,
    /// Listed only while this says the host can serve.
    readiness: Readiness,
    status: watch::Sender<RegistryStatus>,
    /// The used traffic the latest publish tick measured.
    used_mbps: f64,
    sampler: TrafficSampler,
    digest: Option<String>,
    /// Sessions this process has held: a node owned by one of them is ours.
    own_sessions: Vec<i64>,
    /// Allocations from coturn's CLI, when the control channel runs.
    control: Option<watch::Receiver<crate::control::ControlStatus>>,
}

/// Why one ZooKeeper operation of the registry failed; the pass is
/// retried. Its text is what `/readyz` shows as `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the published node changed under us; re-creating it")]
    NodeChanged,
    #[error("cannot update the node: {0}")]
    Update(zk::Error),
    #[error("cannot create the node: {0}")]
    Create(zk::Error),
    #[error("the node exists but cannot be read: {0}")]
    Unreadable(zk::Error),
    #[error("cannot update our own node: {0}")]
    UpdateOwn(zk::Error),
    #[error("{path} is owned by another live session ({owner:#x})")]
    OwnedByAnother { path: String, owner: i64 },
    #[error("cannot prepare the node's replacement: {0}")]
    PrepareReplace(zk::Error),
    #[error("cannot replace the stale node: {0}")]
    Replace(zk::MultiWriteError),
    #[error("node version moved; retrying the withdrawal")]
    VersionMoved,
    #[error("cannot withdraw the node: {0}")]
    Withdraw(zk::Error),
}

/// The node as we last wrote it.
struct Published {
    version: i32,
    payload: HostPayload,
    /// The publish tick at which it was written (max_silence counts from it).
    written_at: Instant,
}

/// Why a session's publishing loop ended.
enum SessionEnd {
    Expired,
    Shutdown,
}

impl Registry {
    /// `None` when `zookeeper.connect` is unset: publishing is off.
    pub fn new(
        mut config_watch: ConfigWatch,
        readiness: Readiness,
    ) -> (Option<Registry>, watch::Receiver<RegistryStatus>) {
        let (status, receiver) = watch::channel(RegistryStatus::default());
        let config = config_watch.borrow_and_update().clone();
        let Some((hosts, _)) = config.zookeeper.hosts_and_chroot() else {
            return (None, receiver);
        };
        let hosts = hosts.to_string();
        status.send_modify(|s| {
            s.enabled = true;
            s.capacity_mbps = config.traffic.capacity_mbps;
        });
        let registry = Registry {
            node_path: config.zookeeper.node_path(),
            base_path: config.zookeeper.base_path(),
            hosts,
            used_mbps: 0.0,
            sampler: TrafficSampler::new(&config.traffic).logging_changes(),
            applied: config,
            config_watch,
            readiness,
            status,
            digest: None,
            own_sessions: Vec::new(),
            control: None,
        };
        (Some(registry), receiver)
    }

    /// Publishes coturn's allocation count from the control channel, and
    /// measures with its relay rate under `traffic.source = "turnserver"`.
    pub fn with_control(
        mut self,
        control: watch::Receiver<crate::control::ControlStatus>,
    ) -> Registry {
        self.sampler = self.sampler.with_control(control.clone());
        self.control = Some(control);
        self
    }

    /// Replaces the interface counters with `counters`.
    pub fn with_counters(mut self, counters: CounterSource) -> Registry {
        self.sampler = self.sampler.with_counters(counters);
        self
    }

    #[tracing::instrument(name = "registry", skip_all, fields(node = %self.node_path))]
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.digest = match &self.zookeeper().auth_file {
            Some(path) => match crate::file_checks::read_limited_text(
                path,
                crate::file_checks::MAX_SECRET_FILE_BYTES,
            ) {
                Ok(text) => Some(text.trim().to_string()),
                Err(error) => {
                    tracing::error!(path = %crate::log_safe::LogSafe::new(&path.to_string_lossy()), %error, "cannot read zookeeper.auth_file; connecting without auth");
                    None
                }
            },
            None => None,
        };
        self.sample_traffic();
        let mut backoff = ExponentialBackoff::new(RECONNECT_MIN, RECONNECT_MAX)
            .expect("constant bounds are valid");
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.open_session() => result,
            };
            let client = match connected {
                Ok(client) => client,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot reach ZooKeeper");
                    self.set_error(format!("cannot reach ZooKeeper: {error}"));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            backoff.reset();
            match self.publish_loop(&client, &shutdown).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Expired => {
                    tracing::warn!("ZooKeeper session expired; opening a new one");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.published = false;
                    });
                }
            }
        }
    }

    /// A new session with the parent path in place.
    async fn open_session(&mut self) -> Result<zk::Client, zk::Error> {
        let client = crate::zookeeper::connect(
            &self.hosts,
            self.zookeeper().session_timeout,
            self.digest.as_deref(),
        )
        .await?;
        let acls = self.acls();
        client
            .mkdir(
                &self.base_path,
                &zk::CreateMode::Persistent.with_acls(acls.as_acls()),
            )
            .await?;
        let session = client.session_id().0;
        self.own_sessions.push(session);
        tracing::info!(session = %format!("{session:#x}"), "ZooKeeper session established");
        self.status.send_modify(|s| {
            s.connected = true;
            s.session = Some(format!("{session:#x}"));
            s.last_error = None;
        });
        Ok(client)
    }

    fn acls(&self) -> NodeAcls {
        if self.digest.is_some() {
            NodeAcls::CreatorWritesAnyoneReads
        } else {
            NodeAcls::Open
        }
    }

    async fn publish_loop(
        &mut self,
        client: &zk::Client,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let mut session_state = client.state_watcher();
        let mut published: Option<Published> = None;
        let mut tick = tokio::time::interval(self.zookeeper().publish_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The latest tick's scheduled instant: max_silence counts in ticks.
        let mut tick_at = tick.tick().await;
        // Set after a failed operation, so the next attempt waits a little.
        let mut retry_at: Option<Instant> = None;
        loop {
            let can_serve = self.readiness.not_ready_reason().is_none();
            let retry_due = retry_at.is_none_or(|at| Instant::now() >= at);
            if retry_due {
                let outcome = if can_serve {
                    self.publish(client, &mut published, tick_at).await
                } else {
                    self.withdraw(client, &mut published).await
                };
                match outcome {
                    Ok(()) => retry_at = None,
                    Err(error) => {
                        tracing::warn!(%error, "ZooKeeper operation failed; will retry");
                        self.set_error(error.to_string());
                        retry_at = Some(Instant::now() + Duration::from_millis(200));
                    }
                }
            }
            self.status.send_if_modified(|s| {
                let changed = s.published != published.is_some();
                s.published = published.is_some();
                changed
            });

            let retry_sleep = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.withdraw_on_shutdown(client, &mut published).await;
                    return SessionEnd::Shutdown;
                }
                state = session_state.changed() => match state {
                    zk::SessionState::Expired | zk::SessionState::AuthFailed | zk::SessionState::Closed => {
                        return SessionEnd::Expired;
                    }
                    zk::SessionState::Disconnected => {
                        tracing::warn!("disconnected from ZooKeeper; the client reconnects");
                        self.status.send_modify(|s| s.connected = false);
                    }
                    other => {
                        tracing::info!(state = ?other, "ZooKeeper connection restored");
                        self.status.send_modify(|s| s.connected = true);
                        // A reconnect may follow a server-side loss of the
                        // node; check it on the next pass.
                        if published.is_some() {
                            let still_ours = matches!(
                                client.check_stat(&self.node_path).await,
                                Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0
                            );
                            if !still_ours {
                                published = None;
                            }
                        }
                    }
                },
                _ = self.readiness.changed() => {}
                at = tick.tick() => {
                    tick_at = at;
                    self.sample_traffic();
                }
                latest = config::next_config(&mut self.config_watch) => {
                    if self.apply(latest) {
                        tick = tokio::time::interval(self.zookeeper().publish_interval);
                        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        tick_at = tick.tick().await;
                    }
                }
                _ = retry_sleep => {}
            }
        }
    }

    /// Creates the node or refreshes it when its content moved enough.
    async fn publish(
        &mut self,
        client: &zk::Client,
        published: &mut Option<Published>,
        tick_at: Instant,
    ) -> Result<(), RegistryError> {
        let payload = self.payload();
        let rule = PublishRule {
            capacity_mbps: self.traffic().capacity_mbps,
            hysteresis_percent: self.traffic().hysteresis_percent,
            headroom_hysteresis_percent: self.traffic().headroom_hysteresis_percent,
            max_silence: self.zookeeper().max_silence,
        };
        let written = published.as_ref().map(|current| Written {
            payload: &current.payload,
            since_written: tick_at.saturating_duration_since(current.written_at),
        });
        match publish_rules::next_action(Wanted::Listed(&payload), written, &rule) {
            NodeAction::Nothing | NodeAction::Delete => {}
            NodeAction::Create => {
                let version = self.create(client, &payload).await?;
                tracing::info!(free_traffic = payload.free_traffic, "published");
                *published = Some(Published {
                    version,
                    payload,
                    written_at: tick_at,
                });
                self.count_write();
            }
            NodeAction::Update => {
                let Some(current) = published.as_mut() else {
                    return Ok(());
                };
                match client
                    .set_data(&self.node_path, &payload.to_json(), Some(current.version))
                    .await
                {
                    Ok(stat) => {
                        current.version = stat.version;
                        current.payload = payload;
                        current.written_at = tick_at;
                        self.count_write();
                    }
                    Err(zk::Error::NoNode) | Err(zk::Error::BadVersion) => {
                        // Someone removed or changed it: create it afresh.
                        *published = None;
                        return Err(RegistryError::NodeChanged);
                    }
                    Err(error) => return Err(RegistryError::Update(error)),
                }
            }
        }
        Ok(())
    }

    fn count_write(&self) {
        self.status.send_modify(|s| {
            s.writes += 1;
            s.last_write_unix = Some(crate::credentials::unix_now().as_secs());
        });
    }

    /// Creates the EPHEMERAL node, replacing one left by our own earlier
    /// session. Returns its version.
    async fn create(
        &mut self,
        client: &zk::Client,
        payload: &HostPayload,
    ) -> Result<i32, RegistryError> {
        let acls = self.acls();
        let options = zk::CreateMode::Ephemeral.with_acls(acls.as_acls());
        let data = payload.to_json();
        match client.create(&self.node_path, &data, &options).await {
            Ok((stat, _)) => return Ok(stat.version),
            Err(zk::Error::NodeExists) => {}
            Err(error) => return Err(RegistryError::Create(error)),
        }
        let (existing, stat) = match client.get_data(&self.node_path).await {
            Ok(found) => found,
            // Gone in between: the next attempt creates it.
            Err(error) => return Err(RegistryError::Unreadable(error)),
        };
        let ownership = publish_rules::ownership(
            stat.ephemeral_owner,
            client.session_id().0,
            &self.own_sessions,
            &existing,
            &payload.rest_addr,
        );
        match ownership {
            Ownership::ThisSession => {
                let stat = client
                    .set_data(&self.node_path, &data, Some(stat.version))
                    .await
                    .map_err(RegistryError::UpdateOwn)?;
                return Ok(stat.version);
            }
            Ownership::EarlierSessionOfThisHost => {
                tracing::info!(
                    owner = %format!("{:#x}", stat.ephemeral_owner),
                    "replacing the node left by an earlier session of this host"
                );
                return self.replace(client, stat.version, &data, &options).await;
            }
            Ownership::AnotherHost => {}
        }
        tracing::error!(
            owner = %format!("{:#x}", stat.ephemeral_owner),
            "znode is held by another live session with a different restAddr: \
             two hosts share zookeeper.node; not touching it"
        );
        Err(RegistryError::OwnedByAnother {
            path: self.node_path.clone(),
            owner: stat.ephemeral_owner,
        })
    }

    /// Replaces a stale node (at `version`) with ours in one multi
    /// operation, version-checked delete then create, so no reader ever
    /// sees the host missing in between.
    async fn replace(
        &mut self,
        client: &zk::Client,
        version: i32,
        data: &[u8],
        options: &zk::CreateOptions<'_>,
    ) -> Result<i32, RegistryError> {
        let mut writer = client.new_multi_writer();
        writer
            .add_delete(&self.node_path, Some(version))
            .and_then(|()| writer.add_create(&self.node_path, data, options))
            .map_err(RegistryError::PrepareReplace)?;
        match writer.commit().await {
            // A new node's data version is 0 (the returned stat can be
            // invalid on some servers).
            Ok(_) => Ok(0),
            // The stale node changed or went in between: the next attempt
            // looks again.
            Err(error) => Err(RegistryError::Replace(error)),
        }
    }

    async fn withdraw(
        &mut self,
        client: &zk::Client,
        published: &mut Option<Published>,
    ) -> Result<(), RegistryError> {
        let Some(current) = published.as_ref() else {
            return Ok(());
        };
        match client.delete(&self.node_path, Some(current.version)).await {
            Ok(()) | Err(zk::Error::NoNode) => {
                tracing::info!("withdrawn");
                *published = None;
                self.status.send_modify(|s| s.withdrawals += 1);
                Ok(())
            }
            Err(zk::Error::BadVersion) => {
                // Changed by someone else; delete it only if it is still ours.
                match client.check_stat(&self.node_path).await {
                    Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => {
                        if let Some(current) = published.as_mut() {
                            current.version = stat.version;
                        }
                        Err(RegistryError::VersionMoved)
                    }
                    _ => {
                        *published = None;
                        Ok(())
                    }
                }
            }
            Err(error) => Err(RegistryError::Withdraw(error)),
        }
    }

    async fn withdraw_on_shutdown(
        &mut self,
        client: &zk::Client,
        published: &mut Option<Published>,
    ) {
        if published.is_none() {
            return;
        }
        match tokio::time::timeout(WITHDRAW_TIMEOUT, self.withdraw(client, published)).await {
            Ok(Ok(())) => tracing::info!("node deleted for shutdown"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot delete the node at shutdown; it goes with the session")
            }
            Err(_) => {
                tracing::warn!("deleting the node at shutdown timed out; it goes with the session")
            }
        }
        self.status.send_modify(|s| s.published = false);
    }

    /// Takes a reloaded configuration; true when the publishing interval
    /// changed. The next pass writes the node if its content moved.
    fn apply(&mut self, latest: Arc<Config>) -> bool {
        let interval_changed =
            latest.zookeeper.publish_interval != self.zookeeper().publish_interval;
        self.sampler.reconfigure(&latest.traffic);
        self.applied = latest;
        let capacity = self.traffic().capacity_mbps;
        self.status.send_modify(|s| s.capacity_mbps = capacity);
        interval_changed
    }

    fn zookeeper(&self) -> &ZookeeperConfig {
        &self.applied.zookeeper
    }

    fn traffic(&self) -> &TrafficConfig {
        &self.applied.traffic
    }

    /// A missing measurement (baseline, missing interface, nothing to
    /// measure) counts as no traffic: the host publishes full capacity.
    fn sample_traffic(&mut self) {
        self.used_mbps = self.sampler.sample(Instant::now()).used_mbps.unwrap_or(0.0);
    }

    fn payload(&self) -> HostPayload {
        let used = self.used_mbps;
        let config = &self.applied;
        let allocations = self
            .control
            .as_ref()
            .and_then(|control| control.borrow().allocations);
        let free = publish_rules::free_traffic(
            config.traffic.capacity_mbps,
            used,
            allocations,
            config.traffic.max_allocations,
        );
        self.status.send_if_modified(|s| {
            let changed = s.free_traffic_mbps != Some(free);
            s.free_traffic_mbps = Some(free);
            changed
        });
        let facts = HostFacts {
            listen: config.api.listen,
            advertise: config.api.advertise,
            turn_uris: config.api.turn_uris.clone(),
            realm: config.turnserver.realm.clone(),
            capacity_mbps: config.traffic.capacity_mbps,
            region: config.zookeeper.region.clone(),
            isp: config.zookeeper.isp.clone(),
            restarts: self.readiness.supervisor.borrow().restarts,
            allocations,
        };
        facts.payload(
            free,
            std::time::SystemTime::now(),
            env!("CARGO_PKG_VERSION"),
        )
    }

    fn set_error(&self, error: String) {
        self.status.send_modify(|s| s.last_error = Some(error));
    }
}

/// Who may do what to the nodes the agent creates.
#[derive(Debug, Clone, Copy)]
enum NodeAcls {
    /// No auth configured: anyone may read and write.
    Open,
    /// `auth_file` configured: only that identity writes, anyone reads.
    CreatorWritesAnyoneReads,
}

static CREATOR_ALL_ANYONE_READ: std::sync::LazyLock<[zk::Acl; 2]> =
    std::sync::LazyLock::new(|| {
        [
            zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("auth", "")),
            zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
        ]
    });

impl NodeAcls {
    fn as_acls(self) -> zk::Acls<'static> {
        match self {
            NodeAcls::Open => zk::Acls::anyone_all(),
            NodeAcls::CreatorWritesAnyoneReads => zk::Acls::new(&CREATOR_ALL_ANYONE_READ[..]),
        }
    }
}

#[cfg(test)]
mod error_tests {
    use super::RegistryError;

    #[test]
    fn errors_read_as_last_error_did() {
        let owned = RegistryError::OwnedByAnother {
            path: "/turn/servers/host-a".into(),
            owner: 0x1f,
        };
        assert_eq!(
            owned.to_string(),
            "/turn/servers/host-a is owned by another live session (0x1f)"
        );
        assert_eq!(
            RegistryError::Withdraw(zookeeper_client::Error::NoAuth).to_string(),
            format!(
                "cannot withdraw the node: {}",
                zookeeper_client::Error::NoAuth
            )
        );
    }
}
