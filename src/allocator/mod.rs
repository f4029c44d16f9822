//! Hands out TURN hosts to signalling servers from the ZooKeeper list the
//! agents publish.
//!
//! [`Allocator::start`] opens a session and keeps an in-memory view of every
//! host, driven by a persistent recursive watch and fully re-listed after
//! every reconnect (watch events can be lost across one). [`Allocator::pick`]
//! is a lock-free read of that view that allocates nothing but the returned
//! host (the weighted strategy also takes a short mutex on its running
//! weights, and grows them once per new host). During a ZooKeeper outage the
//! last view keeps serving until it is older than `max_staleness`.
//!
//! Usable without the agent: `default-features = false, features = ["allocator"]`.
//!
//! ```no_run
//! # async fn example() -> Result<(), turn_agent::allocator::AllocError> {
//! use turn_agent::allocator::{Allocator, AllocatorSettings, Preference};
//! let allocator = Allocator::start(AllocatorSettings::new("zk1:2181,zk2:2181/turn", "/turn/servers"));
//! let host = allocator.pick(&Preference { isp: Some("telecom".into()), region: None })?;
//! println!("{} at {}", host.node, host.payload.rest_addr);
//! # Ok(()) }
//! ```

#[cfg(feature = "agent")]
pub mod fleet_page;
#[cfg(feature = "agent")]
pub mod service;
pub mod strategy;
mod watcher;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use strategy::{Preference, Strategy};

use crate::znode::{HostPayload, PayloadLimits};
use strategy::Selector;

/// One TURN host as published.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// The znode name.
    pub node: String,
    pub payload: HostPayload,
}

/// Where to find the hosts and how to choose.
#[derive(Debug, Clone)]
pub struct AllocatorSettings {
    /// Connect string with optional chroot.
    pub connect: String,
    /// Parent of the host znodes, below the chroot.
    pub path: String,
    /// `user:password` for digest auth, if the ensemble needs it to read.
    pub digest: Option<String>,
    pub session_timeout: Duration,
    pub strategy: Strategy,
    pub min_free_mbps: f64,
    /// How long a view may go without ZooKeeper before picks fail.
    pub max_staleness: Duration,
    /// Caps on host records and their count; records over a cap are skipped.
    pub limits: PayloadLimits,
}

impl AllocatorSettings {
    pub fn new(connect: impl Into<String>, path: impl Into<String>) -> Self {
        AllocatorSettings {
            connect: connect.into(),
            path: path.into(),
            digest: None,
            session_timeout: Duration::from_secs(10),
            strategy: Strategy::RoundRobin,
            min_free_mbps: 1.0,
            max_staleness: Duration::from_secs(60),
            limits: PayloadLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AllocError {
    #[error("no host list yet: ZooKeeper has not been reached")]
    NoView,
    #[error("the host list is {age:?} old (ZooKeeper unreachable for longer than max_staleness {max:?})")]
    Stale { age: Duration, max: Duration },
    #[error("no host with at least {min_free_mbps} Mbps free matches the request")]
    NoHost { min_free_mbps: f64 },
}

/// The view the watcher publishes.
#[derive(Debug, Clone)]
pub struct View {
    /// Sorted by node name; shared, so an update copies pointers, not hosts.
    pub hosts: Vec<Arc<Host>>,
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
}

impl View {
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
}

/// A running allocator. Dropping it stops its watcher.
#[derive(Debug)]
pub struct Allocator {
    view: Arc<ArcSwap<View>>,
    selector: Selector,
    settings: AllocatorSettings,
    _stop: tokio_util::sync::DropGuard,
}

impl Allocator {
    /// Starts watching in the background; must be called inside a Tokio
    /// runtime. Picks fail with [`AllocError::NoView`] until the first
    /// listing arrives.
    pub fn start(settings: AllocatorSettings) -> Allocator {
        let view = Arc::new(ArcSwap::from_pointee(View {
            hosts: Vec::new(),
            synced_at: None,
            disconnected_since: Some(Instant::now()),
            confirmed_at: None,
            live: false,
        }));
        let stop = CancellationToken::new();
        tokio::spawn(watcher::run(settings.clone(), view.clone(), stop.clone()));
        Allocator {
            view,
            selector: Selector::default(),
            settings,
            _stop: stop.drop_guard(),
        }
    }

    /// Picks a host for `preference` with the configured strategy.
    pub fn pick(&self, preference: &Preference) -> Result<Host, AllocError> {
        self.pick_with(self.settings.strategy, preference)
    }

    pub fn pick_with(
        &self,
        strategy: Strategy,
        preference: &Preference,
    ) -> Result<Host, AllocError> {
        let view = self.view.load();
        self.check_fresh(&view)?;
        self.selector
            .select(
                strategy,
                &view.hosts,
                preference,
                self.settings.min_free_mbps,
            )
            .map(|index| Host::clone(&view.hosts[index]))
            .ok_or(AllocError::NoHost {
                min_free_mbps: self.settings.min_free_mbps,
            })
    }

    /// The current view, whatever its age.
    pub fn snapshot(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Waits until the first full listing (or `timeout`).
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.view.load().synced_at.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
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
        Ok(())
    }

    pub fn settings(&self) -> &AllocatorSettings {
        &self.settings
    }
}
