//! The control channel's metrics, read from its status at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use super::{counter, gauge};
use crate::control::ControlStatus;

#[derive(Debug)]
pub struct ControlCollector {
    pub status: watch::Receiver<ControlStatus>,
}

impl Collector for ControlCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let status = self.status.borrow().clone();
        let e = &mut encoder;
        gauge(
            e,
            "turn_agent_control_up",
            "1 while turnserver's CLI answers the agent's polls",
            if status.up { 1.0 } else { 0.0 },
        )?;
        gauge(
            e,
            "turn_agent_control_fallback",
            "1 while traffic and drains use interface counters because the control channel is off or down",
            if status.fallback || !status.enabled { 1.0 } else { 0.0 },
        )?;
        counter(
            e,
            "turn_agent_control_fallbacks",
            "times the control channel went down and the agent fell back to interface counters",
            status.fallbacks,
        )?;
        counter(
            e,
            "turn_agent_control_polls",
            "polls of turnserver's CLI answered and understood",
            status.polls,
        )?;
        if let Some(seconds) = status.last_poll_seconds {
            gauge(
                e,
                "turn_agent_control_poll_seconds",
                "wall time of the last understood poll: pc, ps, and psd with its file when ps was cut at 256 sessions",
                seconds,
            )?;
        }
        if let Some(allocations) = status.allocations {
            gauge(
                e,
                "turn_agent_turnserver_allocations",
                "allocations coturn holds (its own count)",
                allocations as f64,
            )?;
        }
        if let Some(by_transport) = &status.by_transport {
            let family = Family::<[(&'static str, &'static str); 1], Gauge>::default();
            for (transport, count) in [
                ("udp", by_transport.udp),
                ("tcp", by_transport.tcp),
                ("tls", by_transport.tls),
                ("dtls", by_transport.dtls),
                ("other", by_transport.other),
            ] {
                family
                    .get_or_create(&[("transport", transport)])
                    .set(count.try_into().unwrap_or(i64::MAX));
            }
            family.encode(e.encode_descriptor(
                "turn_agent_turnserver_sessions",
                "coturn's sessions by client transport, from its last complete listing",
                None,
                family.metric_type(),
            )?)?;
        }
        if let Some(rate) = status.rate {
            gauge(
                e,
                "turn_agent_turnserver_relay_received_bytes_per_second",
                "bytes per second turnserver received on its sessions, from coturn's counters between two polls",
                rate.received_bytes_per_sec,
            )?;
            gauge(
                e,
                "turn_agent_turnserver_relay_sent_bytes_per_second",
                "bytes per second turnserver sent on its sessions, from coturn's counters between two polls",
                rate.sent_bytes_per_sec,
            )?;
        }
        counter(
            e,
            "turn_agent_turnserver_sessions_started",
            "sessions seen starting since the agent started",
            status.sessions_started,
        )?;
        counter(
            e,
            "turn_agent_turnserver_sessions_ended",
            "sessions seen ending since the agent started",
            status.sessions_ended,
        )?;
        Ok(())
    }
}
