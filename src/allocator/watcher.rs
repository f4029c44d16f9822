//! Keeps the allocator's view in step with ZooKeeper.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::{AllocatorSettings, Host, View};
use crate::backoff::ExponentialBackoff;
use crate::znode::HostPayload;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

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
        if let Err(error) = watch_session(&client, &base, &view, &stop).await {
            tracing::warn!(%error, "allocator session ended; opening a new one");
            mark_disconnected(&view);
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Watches one session until it ends; `Ok` only when stopped.
async fn watch_session(
    client: &zk::Client,
    base: &str,
    view: &ArcSwap<View>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut watcher = client
        .watch(base, zk::AddWatchMode::PersistentRecursive)
        .await
        .map_err(|error| format!("cannot watch {base}: {error}"))?;
    relist(client, base, view).await?;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            event = watcher.changed() => event,
        };
        match event.event_type {
            zk::EventType::Session => match event.session_state {
                zk::SessionState::Disconnected => mark_disconnected(view),
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    // Events during the disconnection may be lost.
                    relist(client, base, view).await?;
                }
                terminal => return Err(format!("session {terminal:?}")),
            },
            zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {
                if let Some(node) = direct_child(base, &event.path) {
                    match client.get_data(&event.path).await {
                        Ok((data, _)) => update(view, node, parse(node, &data)),
                        Err(zk::Error::NoNode) => update(view, node, None),
                        Err(error) => {
                            tracing::warn!(%error, node, "cannot read a host; re-listing");
                            relist(client, base, view).await?;
                        }
                    }
                }
            }
            zk::EventType::NodeDeleted => {
                if let Some(node) = direct_child(base, &event.path) {
                    update(view, node, None);
                }
            }
            zk::EventType::NodeChildrenChanged => {}
        }
    }
}

/// Reads every host afresh and replaces the view.
async fn relist(client: &zk::Client, base: &str, view: &ArcSwap<View>) -> Result<(), String> {
    let children = match client.list_children(base).await {
        Ok(children) => children,
        Err(zk::Error::NoNode) => Vec::new(),
        Err(error) => return Err(format!("cannot list {base}: {error}")),
    };
    let mut hosts = Vec::with_capacity(children.len());
    for node in children {
        let path = format!("{base}/{node}");
        match client.get_data(&path).await {
            Ok((data, _)) => {
                if let Some(payload) = parse(&node, &data) {
                    hosts.push(Host { node, payload });
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(error) => return Err(format!("cannot read {path}: {error}")),
        }
    }
    hosts.sort_by(|a, b| a.node.cmp(&b.node));
    tracing::debug!(hosts = hosts.len(), "host list re-read");
    view.store(Arc::new(View {
        hosts,
        synced_at: Some(Instant::now()),
        disconnected_since: None,
    }));
    Ok(())
}

fn parse(node: &str, data: &[u8]) -> Option<HostPayload> {
    match HostPayload::parse(data) {
        Ok(payload) => Some(payload),
        Err(error) => {
            tracing::warn!(node, %error, "skipping a host with a malformed payload");
            None
        }
    }
}

/// `node` when `path` is `base/node`; deeper paths are not hosts.
fn direct_child<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    let node = path.strip_prefix(base)?.strip_prefix('/')?;
    (!node.is_empty() && !node.contains('/')).then_some(node)
}

/// Replaces (or with `None` removes) one host, copy-on-write.
fn update(view: &ArcSwap<View>, node: &str, payload: Option<HostPayload>) {
    view.rcu(|current| {
        let mut next = View::clone(current);
        next.hosts.retain(|host| host.node != node);
        if let Some(payload) = payload.clone() {
            let index = next.hosts.partition_point(|host| host.node.as_str() < node);
            next.hosts.insert(
                index,
                Host {
                    node: node.to_string(),
                    payload,
                },
            );
        }
        next
    });
}

fn mark_disconnected(view: &ArcSwap<View>) {
    view.rcu(|current| {
        let mut next = View::clone(current);
        next.disconnected_since.get_or_insert_with(Instant::now);
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
        });
        let payload = |free: f64| {
            HostPayload::parse(
                format!(r#"{{"freeTraffic":{free},"restAddr":"10.0.0.1:80"}}"#).as_bytes(),
            )
            .unwrap()
        };
        update(&view, "c", Some(payload(1.0)));
        update(&view, "a", Some(payload(2.0)));
        update(&view, "b", parse("b", b"garbage"));
        update(&view, "a", Some(payload(3.0)));
        let nodes: Vec<_> = view
            .load()
            .hosts
            .iter()
            .map(|h| (h.node.clone(), h.payload.free_traffic))
            .collect();
        assert_eq!(nodes, vec![("a".to_string(), 3.0), ("c".to_string(), 1.0)]);
        update(&view, "c", None);
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
