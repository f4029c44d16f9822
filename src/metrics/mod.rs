//! Prometheus metrics (`GET /metrics`), read from the status channels the
//! tasks already publish, at scrape time: nothing is counted twice, and a
//! scrape never blocks a task.

mod control;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::readiness::{Readiness, Snapshot};
use crate::status::{ChildExit, RegistryStatus};
use crate::time::unix_now;

/// HTTP requests by route and status code. The route is borrowed for the
/// agent's own routes, so counting a request allocates nothing.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: std::borrow::Cow<'static, str>,
    pub status: u16,
}

/// Configuration reloads by outcome: `applied` or `rejected` (the file did
/// not validate; the running configuration was kept).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub outcome: &'static str,
}

/// The agent's metrics registry plus the live counters it owns; a clone
/// is one reference count (the API clones it for every request), and reads
/// the counters through [`Deref`](std::ops::Deref).
#[derive(Clone)]
pub struct AgentMetrics(Arc<AgentMetricSet>);

/// What an [`AgentMetrics`] handle shares.
pub struct AgentMetricSet {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// 1 when the last SIGHUP re-read was applied, 0 when it was rejected;
    /// alert on 0 (a file that will not load at the next start either).
    pub config_last_reload_ok: Gauge,
    /// Changed keys that only an agent restart applies.
    pub config_keys_awaiting_restart: Gauge,
}

impl AgentMetrics {
    pub fn new(
        readiness: Readiness,
        registry_status: watch::Receiver<RegistryStatus>,
        probe_latency_micros: Arc<AtomicU64>,
    ) -> AgentMetrics {
        AgentMetrics::with_control(readiness, registry_status, probe_latency_micros, None)
    }

    /// [`AgentMetrics::new`] plus the control channel's metrics.
    pub fn with_control(
        readiness: Readiness,
        registry_status: watch::Receiver<RegistryStatus>,
        probe_latency_micros: Arc<AtomicU64>,
        control: Option<watch::Receiver<crate::control::ControlStatus>>,
    ) -> AgentMetrics {
        let mut registry = Registry::default();
        if let Some(status) = control {
            registry.register_collector(Box::new(control::ControlCollector { status }));
        }
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "turn_agent_http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        registry.register_collector(Box::new(StatusCollector {
            readiness,
            registry_status,
            probe_latency_micros,
        }));
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "turn_agent_config_reloads",
            "SIGHUP re-reads of the configuration by outcome",
            config_reloads.clone(),
        );
        let config_last_reload_ok = Gauge::default();
        config_last_reload_ok.set(1);
        registry.register(
            "turn_agent_config_last_reload_ok",
            "1 if the last configuration re-read was applied, 0 if it was rejected",
            config_last_reload_ok.clone(),
        );
        let config_keys_awaiting_restart = Gauge::default();
        registry.register(
            "turn_agent_config_keys_awaiting_restart",
            "changed configuration keys that take effect at the next agent start",
            config_keys_awaiting_restart.clone(),
        );
        AgentMetrics(Arc::new(AgentMetricSet {
            registry,
            http_requests,
            config_reloads,
            config_last_reload_ok,
            config_keys_awaiting_restart,
        }))
    }

    /// Records one SIGHUP re-read.
    pub fn reloaded(&self, applied: bool, keys_awaiting_restart: usize) {
        let outcome = if applied { "applied" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
        self.config_last_reload_ok.set(i64::from(applied));
        if applied {
            self.config_keys_awaiting_restart
                .set(keys_awaiting_restart.try_into().unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl std::ops::Deref for AgentMetrics {
    type Target = AgentMetricSet;

    fn deref(&self) -> &AgentMetricSet {
        &self.0
    }
}

#[derive(Debug)]
struct StatusCollector {
    readiness: Readiness,
    registry_status: watch::Receiver<RegistryStatus>,
    probe_latency_micros: Arc<AtomicU64>,
}

/// One constant gauge at scrape time (the HTTP edge's, shared with the
/// allocator service's collector).
pub(crate) use crate::http::gauge;

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn flag(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Snapshot {
            turnserver,
            credentials,
            health,
        } = self.readiness.snapshot();
        let registry = self.registry_status.borrow().clone();
        let now = unix_now().as_secs();
        let e = &mut encoder;

        gauge(
            e,
            "turn_agent_turnserver_up",
            "1 while turnserver answers STUN",
            flag(turnserver.is_ready()),
        )?;
        counter(
            e,
            "turn_agent_turnserver_restarts",
            "turnserver spawns after the first",
            turnserver.restarts,
        )?;
        gauge(
            e,
            "turn_agent_turnserver_crash_loop",
            "1 while turnserver keeps failing to start",
            flag(turnserver.crash_loop),
        )?;
        let exit_code = turnserver
            .last_exit
            .as_ref()
            .and_then(ChildExit::number)
            .map_or(0.0, f64::from);
        gauge(
            e,
            "turn_agent_turnserver_last_exit_code",
            "exit code or signal number of the last turnserver exit (0 if none)",
            exit_code,
        )?;
        let latency = self.probe_latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
        gauge(
            e,
            "turn_agent_turnserver_probe_latency_seconds",
            "round trip of the last STUN probe",
            latency,
        )?;

        counter(
            e,
            "turn_agent_credential_rotations",
            "successful credential rotations",
            credentials.rotations,
        )?;
        counter(
            e,
            "turn_agent_credential_failures",
            "failed credential reconciliations and rotations",
            credentials.failures,
        )?;
        gauge(
            e,
            "turn_agent_credential_consecutive_failures",
            "credential operations failed in a row",
            credentials.consecutive_failures as f64,
        )?;
        gauge(
            e,
            "turn_agent_credential_available",
            "1 while a valid credential can be served",
            flag(credentials.available),
        )?;
        if let Some(issued_at) = credentials.issued_at {
            gauge(
                e,
                "turn_agent_credential_age_seconds",
                "age of the served credential",
                now.saturating_sub(issued_at) as f64,
            )?;
        }
        gauge(
            e,
            "turn_agent_credentials_in_database",
            "agent users or secrets currently in coturn's database",
            credentials.live_in_database as f64,
        )?;
        gauge(
            e,
            "turn_agent_credential_deletions_pending",
            "expired agent users or secrets still in the database because their deletion failed",
            credentials.pending_deletions as f64,
        )?;
        counter(
            e,
            "turn_agent_credential_deletion_failures",
            "failed deletions of expired agent users or secrets",
            credentials.deletion_failures,
        )?;

        gauge(
            e,
            "turn_agent_zookeeper_connected",
            "1 while the ZooKeeper session is connected",
            flag(registry.connected),
        )?;
        gauge(
            e,
            "turn_agent_zookeeper_published",
            "1 while this host's znode exists",
            flag(registry.published),
        )?;
        counter(
            e,
            "turn_agent_zookeeper_writes",
            "znode creations and updates",
            registry.writes,
        )?;
        counter(
            e,
            "turn_agent_zookeeper_withdrawals",
            "znode deletions while running",
            registry.withdrawals,
        )?;
        if let Some(at) = registry.last_write_unix {
            gauge(
                e,
                "turn_agent_zookeeper_last_publish_age_seconds",
                "time since the znode was last written",
                now.saturating_sub(at) as f64,
            )?;
        }
        if let Some(free) = registry.free_traffic_mbps {
            gauge(
                e,
                "turn_agent_traffic_free_mbps",
                "capacity minus measured traffic",
                free,
            )?;
            gauge(
                e,
                "turn_agent_traffic_used_mbps",
                "measured traffic from traffic.source",
                (registry.capacity_mbps - free).max(0.0),
            )?;
        }
        let health = health.self_check;
        if health.enabled {
            counter(
                e,
                "turn_agent_self_check_runs",
                "allocation self-checks performed",
                health.checks,
            )?;
            gauge(
                e,
                "turn_agent_self_check_consecutive_failures",
                "allocation self-checks failed in a row",
                health.consecutive_failures as f64,
            )?;
            gauge(
                e,
                "turn_agent_self_check_failing",
                "1 while failing self-checks keep the host unready",
                flag(health.failing),
            )?;
        }
        Ok(())
    }
}
