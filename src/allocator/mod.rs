//! Hands out TURN hosts to signalling servers from the ZooKeeper list the
//! agents publish.
//!
//! [`Allocator::start`] checks the settings, opens a session, checks that
//! the path exists and then keeps an in-memory view of every host in the
//! background, driven by a persistent recursive watch and fully re-listed
//! (many reads in flight at once) after every reconnect, since watch
//! events can be lost across one. [`Allocator::pick`] is a lock-free read
//! of that view through a [`pick_index::PickIndex`] built once per changed
//! host list, on the first pick after the change: a pick is O(1) or
//! O(log hosts) and [`Allocator::pick_shared`] allocates nothing.
//! [`Allocator::synced`] resolves once the view is first
//! complete and [`Allocator::changes`] tells of every later change; nothing
//! needs polling. After start, every failure is retried with backoff on
//! one session at a time and shown in [`Allocator::status`] with its
//! reason; during a ZooKeeper outage the last view keeps serving until it
//! is older than `max_staleness`.
//!
//! The host records are the JSON documented in [`crate::znode`].
//!
//! Usable without the agent: `default-features = false, features = ["allocator"]`.
//!
//! ```
//! use std::time::Duration;
//! use turn_agent::allocator::{Allocator, AllocatorSettings, Preference, StartError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Settings are checked before anything is started.
//! let refused = Allocator::start(AllocatorSettings::new("zk1:2181", "turn/servers")).await;
//! assert!(matches!(refused, Err(StartError::Path(_))));
//!
//! # let Ok(connect) = std::env::var("TURN_AGENT_DOCTEST_ZOOKEEPER") else { return Ok(()) };
//! # let connect = connect.as_str();
//! // `connect` is e.g. "zk1:2181,zk2:2181/chroot".
//! let allocator = Allocator::start(AllocatorSettings::new(connect, "/turn/servers")).await?;
//! // Resolves once every host has been read (bounded by your own timeout).
//! tokio::time::timeout(Duration::from_secs(10), allocator.synced()).await?;
//! let host = allocator.pick(&Preference { isp: Some("telecom".into()), region: None })?;
//! println!("{} at {}", host.node, host.payload.rest_addr);
//! // Told of every change, no polling:
//! let mut changes = allocator.changes();
//! # if false {
//! changes.changed().await?;
//! # }
//! println!("{} hosts, {:?}", changes.borrow().hosts.len(), allocator.status());
//! # Ok(()) }
//! ```

#[cfg(feature = "client-tokens")]
pub mod client_grant;
pub mod draw;
#[cfg(feature = "agent")]
pub mod fleet_page;
pub mod host_set;
pub mod pick_index;
#[cfg(feature = "agent")]
pub mod service;
pub mod strategy;
mod watcher;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

pub use host_set::HostSet;
pub use strategy::{Preference, Strategy};

use crate::log_safe::LogSafe;
use crate::znode::{HostPayload, PayloadLimits};
use crate::zookeeper::InvalidZookeeperSetting;
use pick_index::{PickIndex, Selector};

/// One TURN host as published.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The znode name.
    pub node: String,
    /// The host's record, as documented in [`crate::znode`].
    pub payload: HostPayload,
}

/// Where to find the hosts and how to choose.
#[derive(Debug, Clone)]
pub struct AllocatorSettings {
    /// Connect string with optional chroot: `host:port[,host:port…][/chroot]`.
    pub connect: String,
    /// Parent of the host znodes, below the chroot; absolute (`/turn/servers`).
    pub path: String,
    /// `user:password` for digest auth, if the ensemble needs it to read.
    pub digest: Option<String>,
    /// The ZooKeeper session timeout asked for.
    pub session_timeout: Duration,
    /// How [`Allocator::pick`] chooses.
    pub strategy: Strategy,
    /// Hosts with less free traffic (Mbps) are never picked.
    pub min_free_mbps: f64,
    /// How long a view may go without ZooKeeper before picks fail.
    pub max_staleness: Duration,
    /// Caps on host records and their count; records over a cap are skipped.
    pub limits: PayloadLimits,
}

impl AllocatorSettings {
    /// Defaults for everything but where the hosts are: a 10 s session,
    /// weighted, at least 1 Mbps free, 60 s of staleness, default limits.
    pub fn new(connect: impl Into<String>, path: impl Into<String>) -> Self {
        AllocatorSettings {
            connect: connect.into(),
            path: path.into(),
            digest: None,
            session_timeout: Duration::from_secs(10),
            strategy: Strategy::Weighted,
            min_free_mbps: 1.0,
            max_staleness: Duration::from_secs(60),
            limits: PayloadLimits::default(),
        }
    }
}

/// Why [`Allocator::start`] refused: nothing was left running.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StartError {
    /// The connect string cannot be used.
    #[error("ZooKeeper connect string: {0}")]
    Connect(InvalidZookeeperSetting),
    /// The path is not an absolute znode path.
    #[error("host path: {0}")]
    Path(InvalidZookeeperSetting),
    /// ZooKeeper answered that the path does not exist: a typo, the wrong
    /// chroot, or no agent has registered yet.
    #[error("host path {} does not exist in ZooKeeper (check the path and the connect string's chroot; agents create it when they first register)", LogSafe::new(.path))]
    NoSuchPath { path: String },
    /// ZooKeeper refused the digest credentials.
    #[error("ZooKeeper refused the credentials: {0}")]
    Auth(zk::Error),
    /// ZooKeeper refused to say whether the path exists.
    #[error("cannot check host path {}: {error}", LogSafe::new(.path))]
    Check { path: String, error: zk::Error },
}

/// Why a pick failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocError {
    #[error("no host list yet: ZooKeeper has not been reached")]
    NoView,
    #[error("the host list is {age:?} old (ZooKeeper unreachable for longer than max_staleness {max:?})")]
    Stale { age: Duration, max: Duration },
    #[error("no host with at least {min_free_mbps} Mbps free matches the request")]
    NoHost { min_free_mbps: f64 },
    /// The path was deleted after start: there is no host list at all,
    /// which is not the same as every host being full.
    #[error("the host path {} does not exist in ZooKeeper", LogSafe::new(.path))]
    NoSuchPath { path: String },
}

/// What keeps the view from being live, with what the server or the
/// connection said; shown in [`Status`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("cannot reach ZooKeeper: {0}")]
    Unreachable(zk::Error),
    #[error("ZooKeeper session ended: {0:?}")]
    SessionEnded(zk::SessionState),
    #[error("disconnected from ZooKeeper")]
    Disconnected,
    #[error("cannot watch the host path: {0}")]
    Watch(zk::Error),
    #[error("cannot read the hosts: {0}")]
    Read(zk::Error),
    #[error("the host path {} does not exist", LogSafe::new(.0))]
    NoSuchPath(String),
}

/// The view the watcher publishes.
#[derive(Debug, Clone)]
pub struct View {
    /// Sorted by node name. Shared in chunks, so an update copies one
    /// chunk and not the fleet; [`HostSet::as_slice`] gives one slice.
    pub hosts: HostSet,
    /// `None` until the first full listing.
    pub synced_at: Option<Instant>,
    /// Set from a disconnection (or a failed listing) until the watch is
    /// re-armed and the hosts re-listed: how long the view has not been
    /// live.
    pub disconnected_since: Option<Instant>,
    /// When ZooKeeper last confirmed this view: the last listing, watch
    /// event or probe answered on a connection whose watch is armed.
    pub confirmed_at: Option<Instant>,
    /// Connected, with the watch armed on this connection and the hosts
    /// re-listed since: changes reach the view. Being connected alone is
    /// not enough (a reconnect does not restore a persistent watch).
    pub live: bool,
    /// The last reason the view is (or was, while still not live) not
    /// live; `None` once live again. A missing path keeps the view live
    /// (the watch sees it come back) with this set.
    pub problem: Option<Problem>,
}

impl View {
    /// An empty view that has never been listed.
    fn unlisted() -> View {
        View {
            hosts: HostSet::new(),
            synced_at: None,
            disconnected_since: Some(Instant::now()),
            confirmed_at: None,
            live: false,
            problem: None,
        }
    }

    /// How far behind ZooKeeper the view may be: the time since ZooKeeper
    /// last confirmed it (since the allocator started, before that).
    pub fn age(&self) -> Duration {
        match (self.confirmed_at, self.disconnected_since) {
            (Some(confirmed), _) => confirmed.elapsed(),
            (None, Some(since)) => since.elapsed(),
            (None, None) => Duration::ZERO,
        }
    }

    /// Live and listed at least once: what `/hosts` reports as `synced`.
    pub fn synced(&self) -> bool {
        self.live && self.synced_at.is_some()
    }

    /// How long the view has not been live; picks fail once this passes
    /// `max_staleness`.
    pub fn unconfirmed_for(&self) -> Duration {
        self.disconnected_since
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// The state of this view, for people and health checks.
    pub fn status(&self) -> Status {
        Status {
            live: self.live,
            synced: self.synced(),
            hosts: self.hosts.len(),
            age: self.age(),
            unconfirmed_for: self.unconfirmed_for(),
            problem: self.problem.clone(),
        }
    }
}

/// How the allocator is doing: [`Allocator::status`].
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Changes reach the view.
    pub live: bool,
    /// Live and listed at least once.
    pub synced: bool,
    /// Hosts in the view.
    pub hosts: usize,
    /// Time since ZooKeeper last confirmed the view ([`View::age`]).
    pub age: Duration,
    /// Time since the view stopped being live ([`View::unconfirmed_for`]).
    pub unconfirmed_for: Duration,
    /// Why it is not live (or the path is missing), when so.
    pub problem: Option<Problem>,
}

/// A view and the pick index of its hosts.
#[derive(Debug)]
struct IndexedView {
    view: Arc<View>,
    index: Arc<PickIndex>,
}

/// A running allocator. Dropping it stops its watcher and closes its
/// session.
#[derive(Debug)]
pub struct Allocator {
    view: Arc<ArcSwap<View>>,
    changes: watch::Receiver<Arc<View>>,
    selector: Selector,
    settings: AllocatorSettings,
    /// The index of the latest view a pick has seen. Built lazily, so a
    /// stream of watch events without picks costs nothing here.
    indexed: ArcSwapOption<IndexedView>,
    /// One caller builds a new index; the others meanwhile pick from the
    /// previous one (its hosts are at most one update older).
    indexing: AtomicBool,
    /// The background watcher; [`Allocator::close`] stops and joins it.
    watcher: tokio_util::task::TaskTracker,
    stop: CancellationToken,
    /// Dropping the allocator without `close` still stops the watcher (it
    /// ends at its next await, unjoined).
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl Allocator {
    /// Checks the settings, opens a session and checks that the host path
    /// exists, then watches in the background (spawned on the current
    /// Tokio runtime). Fails for a connect string or path that cannot be
    /// used, a path ZooKeeper says does not exist, and credentials it
    /// refuses. When no server answers within the session timeout it does
    /// not fail: it keeps trying with backoff, and [`Allocator::status`]
    /// says why there is no view yet.
    ///
    /// Picks fail with [`AllocError::NoView`] until the first listing;
    /// [`Allocator::synced`] resolves then.
    pub async fn start(settings: AllocatorSettings) -> Result<Allocator, StartError> {
        let (hosts, chroot) = crate::zookeeper::parse_connect_string(&settings.connect)
            .map_err(StartError::Connect)?;
        crate::zookeeper::validate_path(&settings.path).map_err(StartError::Path)?;
        let (sender, changes) = watch::channel(Arc::new(View::unlisted()));
        let view = Arc::new(ArcSwap::new(changes.borrow().clone()));
        let published = watcher::Published::new(view.clone(), sender);
        let client = match crate::zookeeper::connect(
            &hosts,
            settings.session_timeout,
            settings.digest.as_deref(),
        )
        .await
        {
            Ok(client) => Some(client),
            Err(error @ zk::Error::AuthFailed) => return Err(StartError::Auth(error)),
            Err(error) => {
                tracing::warn!(%error, "allocator cannot reach ZooKeeper yet; retrying with backoff");
                published.problem(Problem::Unreachable(error));
                None
            }
        };
        // The session has no chroot of its own: the chroot is a prefix.
        let base = format!("{chroot}{}", settings.path);
        if let Some(client) = &client {
            match client.check_stat(&base).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(StartError::NoSuchPath { path: base }),
                Err(error) => return Err(StartError::Check { path: base, error }),
            }
        }
        let stop = CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        tracker.spawn(watcher::run(
            settings.clone(),
            watcher::Target { hosts, base },
            client,
            published,
            stop.clone(),
        ));
        Ok(Allocator {
            view,
            changes,
            selector: Selector::default(),
            settings,
            indexed: ArcSwapOption::empty(),
            indexing: AtomicBool::new(false),
            watcher: tracker,
            stop: stop.clone(),
            _stop_on_drop: stop.drop_guard(),
        })
    }

    /// Picks a host for `preference` with the configured strategy.
    pub fn pick(&self, preference: &Preference) -> Result<Host, AllocError> {
        self.pick_with(self.settings.strategy, preference)
    }

    /// Picks a host for `preference` with `strategy`.
    pub fn pick_with(
        &self,
        strategy: Strategy,
        preference: &Preference,
    ) -> Result<Host, AllocError> {
        self.pick_shared_with(strategy, preference)
            .map(|host| Host::clone(&host))
    }

    /// Like [`Allocator::pick`], without copying the host: no allocation.
    pub fn pick_shared(&self, preference: &Preference) -> Result<Arc<Host>, AllocError> {
        self.pick_shared_with(self.settings.strategy, preference)
    }

    pub fn pick_shared_with(
        &self,
        strategy: Strategy,
        preference: &Preference,
    ) -> Result<Arc<Host>, AllocError> {
        self.pick_map_with(strategy, preference, Arc::clone)
    }

    /// Like [`Allocator::pick_shared`], but lends the host to `read` under
    /// the view instead of returning its `Arc`: no reference count is
    /// touched, which in a large fleet saves a cache miss on a host record
    /// at a random place (docs/allocator-scale.md). Keep `read` short (copy
    /// a field or two): the view it reads stays loaded until it returns.
    pub fn pick_map<T>(
        &self,
        preference: &Preference,
        read: impl FnOnce(&Arc<Host>) -> T,
    ) -> Result<T, AllocError> {
        self.pick_map_with(self.settings.strategy, preference, read)
    }

    /// Like [`Allocator::pick_map`], with `strategy`.
    pub fn pick_map_with<T>(
        &self,
        strategy: Strategy,
        preference: &Preference,
        read: impl FnOnce(&Arc<Host>) -> T,
    ) -> Result<T, AllocError> {
        let view = self.view.load();
        self.check_fresh(&view)?;
        let cached = self.indexed.load();
        let pick = |entry: &IndexedView| {
            draw::PickRng::with_thread(|rng| {
                entry.index.pick(strategy, preference, &self.selector, rng)
            })
            .map(|position| read(&entry.view.hosts.as_slice()[position]))
            .ok_or(AllocError::NoHost {
                min_free_mbps: self.settings.min_free_mbps,
            })
        };
        match cached.as_ref() {
            Some(entry) if Arc::ptr_eq(&entry.view, &view) => pick(entry),
            cached => pick(&self.index_for(&view, cached)),
        }
    }

    /// The index for `view`: the cached one when only the view's times
    /// changed, else a new one (or, while another caller builds it, the
    /// cached one).
    fn index_for(&self, view: &Arc<View>, cached: Option<&Arc<IndexedView>>) -> Arc<IndexedView> {
        if let Some(entry) = cached {
            let same_hosts = entry.view.hosts.same(&view.hosts);
            if same_hosts {
                let entry = Arc::new(IndexedView {
                    view: Arc::clone(view),
                    index: Arc::clone(&entry.index),
                });
                self.indexed.store(Some(Arc::clone(&entry)));
                return entry;
            }
            if self.indexing.swap(true, Ordering::Acquire) {
                return Arc::clone(entry);
            }
        } else {
            self.indexing.store(true, Ordering::Relaxed);
        }
        let entry = Arc::new(IndexedView {
            view: Arc::clone(view),
            index: Arc::new(PickIndex::build(
                view.hosts.as_slice(),
                self.settings.min_free_mbps,
            )),
        });
        self.indexed.store(Some(Arc::clone(&entry)));
        self.indexing.store(false, Ordering::Release);
        entry
    }

    /// The current view, whatever its age.
    pub fn snapshot(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Resolves once the view is first complete (every host read); at
    /// once if it already is. Wrap it in `tokio::time::timeout` to bound
    /// the wait; [`Allocator::status`] tells why it has not resolved.
    pub async fn synced(&self) {
        let mut changes = self.changes.clone();
        // Err only when the watcher is gone, which outlives `self`.
        let _ = changes.wait_for(|view| view.synced_at.is_some()).await;
    }

    /// Stops the background watcher and waits for it: when this returns the
    /// watcher task has ended and dropped its ZooKeeper client; no task of
    /// this allocator runs any more. Picks keep answering from the last
    /// view, which no longer changes. Calling it again returns at once.
    pub async fn close(&self) {
        self.watcher.close();
        self.stop.cancel();
        self.watcher.wait().await;
    }

    /// Waits until the first full listing (or `timeout`); whether it came.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.synced()).await.is_ok()
    }

    /// Every change of the view: hosts added, changed or removed, and the
    /// view becoming live or not. `changed().await` wakes on each; what it
    /// holds is the view as of that change (confirmations by the periodic
    /// probe alone do not wake it, so read [`Allocator::snapshot`] for the
    /// current age).
    pub fn changes(&self) -> watch::Receiver<Arc<View>> {
        self.changes.clone()
    }

    /// Whether the view is live, its age, and why not when it is not.
    pub fn status(&self) -> Status {
        self.view.load().status()
    }

    fn check_fresh(&self, view: &View) -> Result<(), AllocError> {
        if view.synced_at.is_none() {
            return Err(AllocError::NoView);
        }
        let age = view.unconfirmed_for();
        if age > self.settings.max_staleness {
            return Err(AllocError::Stale {
                age,
                max: self.settings.max_staleness,
            });
        }
        if let Some(Problem::NoSuchPath(path)) = &view.problem {
            return Err(AllocError::NoSuchPath { path: path.clone() });
        }
        Ok(())
    }

    /// The settings it was started with.
    pub fn settings(&self) -> &AllocatorSettings {
        &self.settings
    }
}

#[cfg(test)]
mod close_tests {
    use super::*;

    #[tokio::test]
    async fn close_stops_and_joins_the_watcher() {
        // Nothing listens there: the watcher keeps retrying with backoff.
        let mut settings = AllocatorSettings::new("127.0.0.1:1", "/turn/servers");
        settings.session_timeout = Duration::from_millis(200);
        let allocator = Allocator::start(settings).await.unwrap();
        assert!(!allocator.watcher.is_empty(), "the watcher is not running");
        tokio::time::timeout(Duration::from_secs(10), allocator.close())
            .await
            .expect("close did not return");
        assert!(allocator.watcher.is_empty(), "the watcher outlived close");
        // A second close returns at once.
        tokio::time::timeout(Duration::from_secs(1), allocator.close())
            .await
            .unwrap();
    }
}
