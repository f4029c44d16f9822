//! Keeps the allocator's view in step with ZooKeeper.
//!
//! The released zookeeper-client 0.11 does not re-send persistent watches
//! after a reconnect (its `resend_watches` never selects `SetWatches2`), so
//! a persistent recursive watch is silently dead after any disconnection,
//! even one far shorter than the session timeout. Our patched copy
//! (`vendor/zookeeper-client`) fixes that, but the watcher does not rely on
//! it: it
//! re-arms the watch itself after every reconnect (the new watch is added
//! before the old one is dropped, so the server never sees a removal) and
//! re-lists only once the new watch is in place. The view counts as
//! confirmed only by what the server answered on a connection whose watch
//! this code armed: a listing, a watch event or a periodic probe.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::{AllocatorSettings, Host, Problem, View};
use crate::backoff::ExponentialBackoff;
use crate::log_safe::LogSafe;
use crate::znode::{HostPayload, LogBudget, PayloadLimits};

/// Skipped records are re-read on every re-list: warn about a few per minute.
static SKIP_WARNINGS: Mutex<LogBudget> = Mutex::new(LogBudget::new(20, Duration::from_secs(60)));

/// Between sessions: after a failed connect and after a session ends, so a
/// session that fails at once cannot turn into a storm of new sessions.
/// Reset only once a session has listed the hosts.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// How often a quiet, live view is confirmed by asking the server.
const PROBE_INTERVAL_MAX: Duration = Duration::from_millis(500);
/// Between attempts to arm the watch or list the hosts on one live
/// connection (a refused watch, a failed read).
const REARM_MIN: Duration = Duration::from_millis(200);
const REARM_MAX: Duration = Duration::from_secs(5);
/// Reads in flight at once during a listing, on the one session.
const READS_IN_FLIGHT: usize = 512;

/// Where the hosts are: the ensemble and the full path (chroot included).
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub hosts: String,
    pub base: String,
}

/// Why one session's watch loop ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnded {
    #[error("session {0:?}")]
    Terminal(zk::SessionState),
    #[error("cannot watch {path}: {error}")]
    Watch { path: String, error: zk::Error },
}

impl SessionEnded {
    fn problem(&self) -> Problem {
        match self {
            SessionEnded::Terminal(state) => Problem::SessionEnded(*state),
            SessionEnded::Watch { error, .. } => Problem::Watch(error.clone()),
        }
    }
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error("cannot list {path}: {error}")]
    List { path: String, error: zk::Error },
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: zk::Error },
}

impl ListError {
    fn problem(&self) -> Problem {
        match self {
            ListError::List { error, .. } | ListError::Read { error, .. } => {
                Problem::Read(error.clone())
            }
        }
    }
}

/// The view as picks read it (lock-free) and as [`super::Allocator::changes`]
/// announces it. Only the watcher task writes.
#[derive(Debug)]
pub(super) struct Published {
    view: Arc<ArcSwap<View>>,
    changes: watch::Sender<Arc<View>>,
}

impl Published {
    pub(super) fn new(view: Arc<ArcSwap<View>>, changes: watch::Sender<Arc<View>>) -> Published {
        Published { view, changes }
    }

    /// Stores a changed copy of the view; `announce` wakes the
    /// subscribers (not done for a mere confirmation).
    fn modify(&self, announce: bool, change: impl FnOnce(&mut View)) {
        let mut next = View::clone(&self.view.load());
        change(&mut next);
        let next = Arc::new(next);
        self.view.store(next.clone());
        if announce {
            self.changes.send_replace(next);
        }
    }

    fn load(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Records why the view is not live without otherwise changing it.
    pub(super) fn problem(&self, problem: Problem) {
        self.modify(true, |view| view.problem = Some(problem));
    }
}

pub(super) async fn run(
    settings: AllocatorSettings,
    target: Target,
    mut first: Option<zk::Client>,
    published: Published,
    stop: CancellationToken,
) {
    let probe_interval = probe_interval(settings.session_timeout);
    let mut backoff =
        ExponentialBackoff::new(RECONNECT_MIN, RECONNECT_MAX).expect("constant bounds are valid");
    loop {
        let client = match first.take() {
            Some(client) => client,
            None => {
                let connected = tokio::select! {
                    _ = stop.cancelled() => return,
                    result = crate::zookeeper::connect(&target.hosts, settings.session_timeout, settings.digest.as_deref()) => result,
                };
                match connected {
                    Ok(client) => client,
                    Err(error) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "allocator cannot reach ZooKeeper");
                        mark_disconnected(&published, Problem::Unreachable(error));
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                }
            }
        };
        let ended = watch_session(
            &client,
            &target.base,
            &published,
            probe_interval,
            &settings.limits,
            &mut backoff,
            &stop,
        )
        .await;
        let Err(ended) = ended else {
            return;
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %ended, retry_in_ms = delay.as_millis() as u64, "allocator session ended; opening a new one");
        mark_disconnected(&published, ended.problem());
        drop(client);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A third of the session timeout, at most [`PROBE_INTERVAL_MAX`].
fn probe_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 3)
        .min(PROBE_INTERVAL_MAX)
        .max(Duration::from_millis(10))
}

/// Watches one session until it ends; `Ok` only when stopped. A watch or
/// listing that fails on a live connection is retried on this session
/// with its own backoff; `sessions` is reset once the hosts are listed.
async fn watch_session(
    client: &zk::Client,
    base: &str,
    published: &Published,
    probe_interval: Duration,
    limits: &PayloadLimits,
    sessions: &mut ExponentialBackoff,
    stop: &CancellationToken,
) -> Result<(), SessionEnded> {
    let mut retries =
        ExponentialBackoff::new(REARM_MIN, REARM_MAX).expect("constant bounds are valid");
    let mut watcher: Option<zk::PersistentWatcher> = None;
    // `None` while the view is live; otherwise when to try arming (or
    // re-listing) next.
    let mut rearm_at = Some(Instant::now());
    let mut probe = tokio::time::interval(probe_interval);
    probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let rearm_due = async {
            match rearm_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next_event = async {
            match watcher.as_mut() {
                Some(watcher) => watcher.changed().await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            event = next_event => event,
            _ = rearm_due => {
                // Without a watch yet no session event can arrive, so the
                // attempt is made (and retried with backoff) regardless.
                if is_connected(client.state()) || watcher.is_none() {
                    rearm_at = rearm(client, base, published, &mut watcher, limits, &mut retries).await?;
                    if rearm_at.is_none() {
                        sessions.reset();
                    }
                } else {
                    // The next SyncConnected re-arms.
                    rearm_at = None;
                }
                continue;
            }
            _ = probe.tick(), if rearm_at.is_none() => {
                // A watch event for a change is delivered before the answer
                // to any later read on the same connection, so an answer
                // confirms the view up to now. Bounded, so a silent server
                // never holds back the session events queued behind it.
                let answer = tokio::time::timeout(probe_interval, client.check_stat(base)).await;
                if matches!(answer, Ok(Ok(_))) {
                    confirm(published);
                }
                continue;
            }
        };
        match event.event_type {
            zk::EventType::Session => match event.session_state {
                zk::SessionState::Disconnected => {
                    mark_disconnected(published, Problem::Disconnected)
                }
                state if is_connected(state) => {
                    rearm_at =
                        rearm(client, base, published, &mut watcher, limits, &mut retries).await?;
                }
                terminal => return Err(SessionEnded::Terminal(terminal)),
            },
            // The path itself came back or went away: list again, which
            // shows it as the hosts or as the path missing.
            zk::EventType::NodeCreated | zk::EventType::NodeDeleted if event.path == base => {
                if rearm_at.is_none() {
                    rearm_at = relist_or_retry(client, base, published, limits, &mut retries).await;
                }
            }
            zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {
                if let Some(node) = direct_child(base, &event.path) {
                    match client.get_data(&event.path).await {
                        Ok((data, _)) => update(
                            published,
                            node,
                            decode_host(node, &data, limits),
                            limits.max_hosts,
                        ),
                        Err(zk::Error::NoNode) => update(published, node, None, limits.max_hosts),
                        Err(error) => {
                            tracing::warn!(%error, node = %LogSafe::new(node), "cannot read a host; re-listing");
                            if rearm_at.is_none() {
                                rearm_at =
                                    relist_or_retry(client, base, published, limits, &mut retries)
                                        .await;
                            }
                        }
                    }
                }
            }
            zk::EventType::NodeDeleted => {
                if let Some(node) = direct_child(base, &event.path) {
                    update(published, node, None, limits.max_hosts);
                }
            }
            zk::EventType::NodeChildrenChanged => {}
        }
    }
}

fn is_connected(state: zk::SessionState) -> bool {
    matches!(
        state,
        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
    )
}

/// Adds the persistent recursive watch on `base`.
async fn arm(client: &zk::Client, base: &str) -> Result<zk::PersistentWatcher, SessionEnded> {
    client
        .watch(base, zk::AddWatchMode::PersistentRecursive)
        .await
        .map_err(|error| SessionEnded::Watch {
            path: base.to_string(),
            error,
        })
}

/// On a new or restored connection: a fresh watch replaces `watcher`,
/// then the hosts are re-listed. Returns when to try again if either
/// failed on a connection that is still alive (`None` when the view is
/// live again); a failure of the session itself arrives as a session
/// event.
async fn rearm(
    client: &zk::Client,
    base: &str,
    published: &Published,
    watcher: &mut Option<zk::PersistentWatcher>,
    limits: &PayloadLimits,
    retries: &mut ExponentialBackoff,
) -> Result<Option<Instant>, SessionEnded> {
    match arm(client, base).await {
        // Assigning drops the old watcher after the new one is registered.
        Ok(fresh) => *watcher = Some(fresh),
        Err(SessionEnded::Watch { error, .. }) if !ends_session(&error) => {
            let delay = retries.next_delay();
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot arm the host watch; retrying");
            mark_disconnected(published, Problem::Watch(error));
            return Ok(Some(Instant::now() + delay));
        }
        Err(error) => return Err(error),
    }
    Ok(relist_or_retry(client, base, published, limits, retries).await)
}

/// Re-lists; on failure, when to try again.
async fn relist_or_retry(
    client: &zk::Client,
    base: &str,
    published: &Published,
    limits: &PayloadLimits,
    retries: &mut ExponentialBackoff,
) -> Option<Instant> {
    match relist(client, base, published, limits).await {
        Ok(()) => {
            retries.reset();
            None
        }
        Err(error) => {
            let delay = retries.next_delay();
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot re-list the hosts; retrying");
            mark_disconnected(published, error.problem());
            Some(Instant::now() + delay)
        }
    }
}

/// Reads every host afresh, many reads in flight at once on the one
/// session, and replaces the view; the view is live and confirmed from
/// here on. A missing path is a live, empty view that says so.
async fn relist(
    client: &zk::Client,
    base: &str,
    published: &Published,
    limits: &PayloadLimits,
) -> Result<(), ListError> {
    let (hosts, problem) = match client.list_children(base).await {
        Ok(children) => (read_hosts(client, base, children, limits).await?, None),
        Err(zk::Error::NoNode) => (Vec::new(), Some(Problem::NoSuchPath(base.to_string()))),
        Err(error) => {
            return Err(ListError::List {
                path: base.to_string(),
                error,
            })
        }
    };
    if let Some(problem) = &problem {
        tracing::warn!(%problem, "the allocator has no hosts to hand out");
    }
    tracing::debug!(hosts = hosts.len(), "host list re-read");
    let now = Instant::now();
    let hosts = super::HostSet::from_hosts(hosts);
    published.modify(true, |view| {
        *view = View {
            hosts,
            synced_at: Some(now),
            disconnected_since: None,
            confirmed_at: Some(now),
            live: true,
            problem,
        }
    });
    Ok(())
}

/// Reads `children` of `base` in name order, keeping up to
/// [`READS_IN_FLIGHT`] requests on the wire (zookeeper-client sends a
/// request when it is made and answers arrive in order), so a listing
/// costs a few round trips instead of one per host. At most `max_hosts`
/// usable records are kept, the first by name.
async fn read_hosts(
    client: &zk::Client,
    base: &str,
    mut children: Vec<String>,
    limits: &PayloadLimits,
) -> Result<Vec<Arc<Host>>, ListError> {
    // By name, so which hosts a full view keeps does not depend on order.
    children.sort_unstable();
    let total = children.len();
    let mut hosts = Vec::with_capacity(total.min(limits.max_hosts));
    let mut names = children.into_iter();
    let mut in_flight = VecDeque::with_capacity(READS_IN_FLIGHT.min(total));
    let mut answered = 0;
    loop {
        while in_flight.len() < READS_IN_FLIGHT {
            let Some(node) = names.next() else { break };
            let path = format!("{base}/{node}");
            let read = client.get_data(&path);
            in_flight.push_back((node, path, read));
        }
        let Some((node, path, read)) = in_flight.pop_front() else {
            break;
        };
        answered += 1;
        match read.await {
            Ok((data, _)) => {
                if let Some(payload) = decode_host(&node, &data, limits) {
                    hosts.push(Arc::new(Host { node, payload }));
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(error) => return Err(ListError::Read { path, error }),
        }
        if hosts.len() == limits.max_hosts && answered < total {
            tracing::warn!(
                skipped = total - answered,
                max_hosts = limits.max_hosts,
                "more host records than max_hosts; the view keeps the first by name"
            );
            break;
        }
    }
    Ok(hosts)
}

/// One host record as read from its znode; `None` (logged) when it cannot
/// be used.
fn decode_host(node: &str, data: &[u8], limits: &PayloadLimits) -> Option<HostPayload> {
    match HostPayload::decode(data, limits) {
        Ok(payload) => Some(payload),
        Err(error) => {
            warn_skipped(node, &error);
            None
        }
    }
}

/// Names the skipped node (escaped, truncated), a few times a minute.
fn warn_skipped(node: &str, error: &dyn std::fmt::Display) {
    let admitted = SKIP_WARNINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .admit(std::time::Instant::now());
    if let Some(suppressed) = admitted {
        let node = LogSafe::new(node);
        tracing::warn!(%node, %error, suppressed, "skipping a host record");
    }
}

fn ends_session(error: &zk::Error) -> bool {
    matches!(
        error,
        zk::Error::SessionExpired
            | zk::Error::AuthFailed
            | zk::Error::ClientClosed
            | zk::Error::NoHosts
    )
}

/// `node` when `path` is `base/node`; deeper paths are not hosts.
fn direct_child<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    let node = path.strip_prefix(base)?.strip_prefix('/')?;
    (!node.is_empty() && !node.contains('/')).then_some(node)
}

/// Replaces (or with `None` removes) one host: the view's host set copies
/// one chunk and shares the rest with the previous view. A new host past
/// `max_hosts` is skipped. The server just told us about it, which
/// confirms a live view.
fn update(published: &Published, node: &str, payload: Option<HostPayload>, max_hosts: usize) {
    let now = Instant::now();
    let current = published.load();
    let hosts = match payload {
        Some(payload) => {
            if current.hosts.len() >= max_hosts && current.hosts.get(node).is_none() {
                warn_skipped(
                    node,
                    &format_args!("the view already holds max_hosts {max_hosts} hosts"),
                );
                return confirm(published);
            }
            current.hosts.with(Arc::new(Host {
                node: node.to_string(),
                payload,
            }))
        }
        None if current.hosts.get(node).is_some() => current.hosts.without(node),
        None => return confirm(published),
    };
    published.modify(true, |view| {
        view.hosts = hosts;
        if view.live {
            view.confirmed_at = Some(now);
        }
    });
}

/// The server answered on a connection whose watch is armed: the view is
/// confirmed up to now. Ignored while the watch is not (yet) re-armed.
/// Not announced as a change.
fn confirm(published: &Published) {
    if !published.load().live {
        return;
    }
    let now = Instant::now();
    published.modify(false, |view| view.confirmed_at = Some(now));
}

/// The view stops being live until the watch is re-armed and the hosts
/// re-listed; the first moment counts, the latest reason is kept.
fn mark_disconnected(published: &Published, problem: Problem) {
    published.modify(true, |view| {
        view.disconnected_since.get_or_insert_with(Instant::now);
        view.live = false;
        view.problem = Some(problem);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_direct_children_are_hosts() {
        assert_eq!(direct_child("/turn/servers", "/turn/servers/a"), Some("a"));
        assert_eq!(direct_child("/turn/servers", "/turn/servers"), None);
        assert_eq!(direct_child("/turn/servers", "/turn/servers/a/b"), None);
        assert_eq!(direct_child("/turn/servers", "/turn/serversx/a"), None);
    }

    fn published() -> (Published, watch::Receiver<Arc<View>>) {
        let (sender, changes) = watch::channel(Arc::new(View {
            hosts: super::super::HostSet::new(),
            synced_at: Some(Instant::now()),
            disconnected_since: None,
            confirmed_at: None,
            live: true,
            problem: None,
        }));
        let view = Arc::new(ArcSwap::new(changes.borrow().clone()));
        (Published::new(view, sender), changes)
    }

    #[tokio::test]
    async fn updates_keep_the_view_sorted_and_skip_malformed() {
        let (view, mut changes) = published();
        let payload = |free: f64| {
            HostPayload::parse(
                format!(r#"{{"freeTraffic":{free},"restAddr":"10.0.0.1:80"}}"#).as_bytes(),
            )
            .unwrap()
        };
        let limits = PayloadLimits::default();
        update(&view, "c", Some(payload(1.0)), 3);
        update(&view, "a", Some(payload(2.0)), 3);
        update(&view, "b", decode_host("b", b"garbage", &limits), 3);
        update(&view, "a", Some(payload(3.0)), 3);
        let nodes: Vec<_> = view
            .load()
            .hosts
            .iter()
            .map(|h| (h.node.clone(), h.payload.free_traffic))
            .collect();
        assert_eq!(nodes, vec![("a".to_string(), 3.0), ("c".to_string(), 1.0)]);
        assert!(changes.has_changed().unwrap(), "changes are announced");
        changes.mark_unchanged();
        let shared = view.load().hosts.get("c").unwrap().clone();
        update(&view, "b", Some(payload(4.0)), 3);
        assert!(
            Arc::ptr_eq(&shared, view.load().hosts.get("c").unwrap()),
            "an update shares the hosts it did not change"
        );
        update(&view, "d", Some(payload(5.0)), 3);
        assert_eq!(view.load().hosts.len(), 3, "max_hosts holds");
        update(&view, "b", None, 3);
        update(&view, "c", None, 3);
        assert_eq!(view.load().hosts.len(), 1);
        assert_eq!(changes.borrow_and_update().hosts.len(), 1);
        confirm(&view);
        assert!(
            !changes.has_changed().unwrap(),
            "a confirmation is no change"
        );
        mark_disconnected(&view, Problem::Disconnected);
        let since = view.load().disconnected_since.unwrap();
        mark_disconnected(&view, Problem::Unreachable(zk::Error::ConnectionLoss));
        assert_eq!(
            view.load().disconnected_since,
            Some(since),
            "the first disconnection counts"
        );
        assert_eq!(
            view.load().problem,
            Some(Problem::Unreachable(zk::Error::ConnectionLoss)),
            "the latest reason is shown"
        );
        assert!(changes.has_changed().unwrap());
    }
}
