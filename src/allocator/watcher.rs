//! Keeps the allocator's view in step with ZooKeeper.
//!
//! zookeeper-client 0.11 does not re-send persistent watches after a
//! reconnect (its `resend_watches` never selects `SetWatches2`), so a
//! persistent recursive watch is silently dead after any disconnection,
//! even one far shorter than the session timeout. The watcher therefore
//! re-arms the watch itself after every reconnect (the new watch is added
//! before the old one is dropped, so the server never sees a removal) and
//! re-lists only once the new watch is in place. The view counts as
//! confirmed only by what the server answered on a connection whose watch
//! this code armed: a listing, a watch event or a periodic probe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::{AllocatorSettings, Host, View};
use crate::backoff::ExponentialBackoff;
use crate::log_safe::LogSafe;
use crate::znode::{HostPayload, LogBudget, PayloadLimits};

/// Skipped records are re-read on every re-list: warn about a few per minute.
static SKIP_WARNINGS: Mutex<LogBudget> = Mutex::new(LogBudget::new(20, Duration::from_secs(60)));

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// How often a quiet, live view is confirmed by asking the server.
const PROBE_INTERVAL_MAX: Duration = Duration::from_millis(500);
/// Wait before re-arming again after a failed attempt on a live connection.
const REARM_RETRY: Duration = Duration::from_millis(200);

/// Why one session's watch loop ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnded {
    #[error("session {0:?}")]
    Terminal(zk::SessionState),
    #[error("cannot watch {path}: {error}")]
    Watch { path: String, error: zk::Error },
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error("cannot list {path}: {error}")]
    List { path: String, error: zk::Error },
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: zk::Error },
}

pub(super) async fn run(
    settings: AllocatorSettings,
    view: Arc<ArcSwap<View>>,
    stop: CancellationToken,
) {
    let (hosts, chroot) = match crate::zookeeper::parse_connect_string(&settings.connect) {
        Ok(parts) => parts,
        Err(error) => {
            tracing::error!(%error, "invalid ZooKeeper connect string; the allocator cannot start");
            return;
        }
    };
    let base = format!("{chroot}{}", settings.path);
    let probe_interval = probe_interval(settings.session_timeout);
    let mut backoff =
        ExponentialBackoff::new(RECONNECT_MIN, RECONNECT_MAX).expect("constant bounds are valid");
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            result = crate::zookeeper::connect(&hosts, settings.session_timeout, settings.digest.as_deref()) => result,
        };
        let client = match connected {
            Ok(client) => client,
            Err(error) => {
                mark_disconnected(&view);
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "allocator cannot reach ZooKeeper");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        backoff.reset();
        if let Err(error) = watch_session(
            &client,
            &base,
            &view,
            probe_interval,
            &settings.limits,
            &stop,
        )
        .await
        {
            tracing::warn!(%error, "allocator session ended; opening a new one");
            mark_disconnected(&view);
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// A third of the session timeout, at most [`PROBE_INTERVAL_MAX`].
fn probe_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 3)
        .min(PROBE_INTERVAL_MAX)
        .max(Duration::from_millis(10))
}

/// Watches one session until it ends; `Ok` only when stopped.
async fn watch_session(
    client: &zk::Client,
    base: &str,
    view: &ArcSwap<View>,
    probe_interval: Duration,
    limits: &PayloadLimits,
    stop: &CancellationToken,
) -> Result<(), SessionEnded> {
    let mut watcher = arm(client, base).await?;
    // `None` while the view is live; otherwise when to try re-arming (or
    // re-listing) next.
    let mut rearm_at = relist_or_retry(client, base, view, limits).await;
    let mut probe = tokio::time::interval(probe_interval);
    probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let rearm_due = async {
            match rearm_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            event = watcher.changed() => event,
            _ = rearm_due => {
                if is_connected(client.state()) {
                    rearm_at = rearm(client, base, view, &mut watcher, limits).await?;
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
                    confirm(view);
                }
                continue;
            }
        };
        match event.event_type {
            zk::EventType::Session => match event.session_state {
                zk::SessionState::Disconnected => mark_disconnected(view),
                state if is_connected(state) => {
                    rearm_at = rearm(client, base, view, &mut watcher, limits).await?;
                }
                terminal => return Err(SessionEnded::Terminal(terminal)),
            },
            zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {
                if let Some(node) = direct_child(base, &event.path) {
                    match client.get_data(&event.path).await {
                        Ok((data, _)) => update(
                            view,
                            node,
                            decode_host(node, &data, limits),
                            limits.max_hosts,
                        ),
                        Err(zk::Error::NoNode) => update(view, node, None, limits.max_hosts),
                        Err(error) => {
                            tracing::warn!(%error, node = %LogSafe::new(node), "cannot read a host; re-listing");
                            if rearm_at.is_none() {
                                rearm_at = relist_or_retry(client, base, view, limits).await;
                            }
                        }
                    }
                }
            }
            zk::EventType::NodeDeleted => {
                if let Some(node) = direct_child(base, &event.path) {
                    update(view, node, None, limits.max_hosts);
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

/// After a reconnect: a fresh watch replaces `watcher`, then the hosts are
/// re-listed. Returns when to try again if either failed on a connection
/// that is still alive (`None` when the view is live again); a failure of
/// the session itself arrives as a session event.
async fn rearm(
    client: &zk::Client,
    base: &str,
    view: &ArcSwap<View>,
    watcher: &mut zk::PersistentWatcher,
    limits: &PayloadLimits,
) -> Result<Option<Instant>, SessionEnded> {
    match arm(client, base).await {
        // Assigning drops the old watcher after the new one is registered.
        Ok(fresh) => *watcher = fresh,
        Err(SessionEnded::Watch { error, .. }) if !ends_session(&error) => {
            tracing::warn!(%error, "cannot re-arm the host watch; retrying");
            return Ok(Some(Instant::now() + REARM_RETRY));
        }
        Err(error) => return Err(error),
    }
    Ok(relist_or_retry(client, base, view, limits).await)
}

/// Re-lists; on failure, when to try again.
async fn relist_or_retry(
    client: &zk::Client,
    base: &str,
    view: &ArcSwap<View>,
    limits: &PayloadLimits,
) -> Option<Instant> {
    match relist(client, base, view, limits).await {
        Ok(()) => None,
        Err(error) => {
            tracing::warn!(%error, "cannot re-list the hosts; retrying");
            mark_disconnected(view);
            Some(Instant::now() + REARM_RETRY)
        }
    }
}

/// Reads every host afresh and replaces the view; the view is live and
/// confirmed from here on.
async fn relist(
    client: &zk::Client,
    base: &str,
    view: &ArcSwap<View>,
    limits: &PayloadLimits,
) -> Result<(), ListError> {
    let mut children = match client.list_children(base).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(error) => {
            return Err(ListError::List {
                path: base.to_string(),
                error,
            })
        }
    };
    // By name, so which hosts a full view keeps does not depend on order.
    children.sort_unstable();
    let mut hosts = Vec::with_capacity(children.len().min(limits.max_hosts));
    let total = children.len();
    for (read, node) in children.into_iter().enumerate() {
        if hosts.len() == limits.max_hosts {
            tracing::warn!(
                skipped = total - read,
                max_hosts = limits.max_hosts,
                "more host records than max_hosts; the view keeps the first by name"
            );
            break;
        }
        let path = format!("{base}/{node}");
        match client.get_data(&path).await {
            Ok((data, _)) => {
                if let Some(payload) = decode_host(&node, &data, limits) {
                    hosts.push(Arc::new(Host { node, payload }));
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(error) => return Err(ListError::Read { path, error }),
        }
    }
    tracing::debug!(hosts = hosts.len(), "host list re-read");
    let now = Instant::now();
    view.store(Arc::new(View {
        hosts,
        synced_at: Some(now),
        disconnected_since: None,
        confirmed_at: Some(now),
        live: true,
    }));
    Ok(())
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

/// Replaces (or with `None` removes) one host, copy-on-write: the other
/// hosts are shared with the previous view, not copied. A new host past
/// `max_hosts` is skipped. The server just told us about it, which
/// confirms a live view.
fn update(view: &ArcSwap<View>, node: &str, payload: Option<HostPayload>, max_hosts: usize) {
    let now = Instant::now();
    let host = payload.map(|payload| {
        Arc::new(Host {
            node: node.to_string(),
            payload,
        })
    });
    let mut over_cap = false;
    view.rcu(|current| {
        let mut next = View::clone(current);
        if next.live {
            next.confirmed_at = Some(now);
        }
        match (
            next.hosts
                .binary_search_by(|host| host.node.as_str().cmp(node)),
            &host,
        ) {
            (Ok(index), Some(host)) => next.hosts[index] = host.clone(),
            (Ok(index), None) => {
                next.hosts.remove(index);
            }
            (Err(index), Some(host)) if next.hosts.len() < max_hosts => {
                next.hosts.insert(index, host.clone());
            }
            (Err(_), Some(_)) => over_cap = true,
            (Err(_), None) => {}
        }
        next
    });
    if over_cap {
        warn_skipped(
            node,
            &format_args!("the view already holds max_hosts {max_hosts} hosts"),
        );
    }
}

/// The server answered on a connection whose watch is armed: the view is
/// confirmed up to now. Ignored while the watch is not (yet) re-armed.
fn confirm(view: &ArcSwap<View>) {
    if !view.load().live {
        return;
    }
    let now = Instant::now();
    view.rcu(|current| {
        let mut next = View::clone(current);
        if next.live {
            next.confirmed_at = Some(now);
        }
        next
    });
}

/// The view stops being live until the watch is re-armed and the hosts
/// re-listed; the first moment counts.
fn mark_disconnected(view: &ArcSwap<View>) {
    view.rcu(|current| {
        let mut next = View::clone(current);
        next.disconnected_since.get_or_insert_with(Instant::now);
        next.live = false;
        next
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

    #[tokio::test]
    async fn updates_keep_the_view_sorted_and_skip_malformed() {
        let view = ArcSwap::from_pointee(View {
            hosts: Vec::new(),
            synced_at: Some(Instant::now()),
            disconnected_since: None,
            confirmed_at: None,
            live: true,
        });
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
        let shared = view.load().hosts[1].clone();
        update(&view, "b", Some(payload(4.0)), 3);
        assert!(
            Arc::ptr_eq(&shared, &view.load().hosts[2]),
            "an update shares the hosts it did not change"
        );
        update(&view, "d", Some(payload(5.0)), 3);
        assert_eq!(view.load().hosts.len(), 3, "max_hosts holds");
        update(&view, "b", None, 3);
        update(&view, "c", None, 3);
        assert_eq!(view.load().hosts.len(), 1);
        mark_disconnected(&view);
        let since = view.load().disconnected_since.unwrap();
        mark_disconnected(&view);
        assert_eq!(
            view.load().disconnected_since,
            Some(since),
            "the first disconnection counts"
        );
    }
}
