//! The payload of a host's znode: written by the agent's registry, read by
//! the allocator. One schema for both, so they cannot drift; this is the
//! one place it is documented.
//!
//! # The host record
//!
//! Each TURN host is one znode under the allocator's path (by default
//! `/turn/servers/<node>`, the node name chosen by the agent), EPHEMERAL so
//! it disappears with the agent's session. Its data is one JSON object in
//! UTF-8:
//!
//! ```json
//! {"freeTraffic":812.4,"restAddr":"192.0.2.10:8086",
//!  "turnUris":["turn:192.0.2.10:3478?transport=udp"],"realm":"example.org",
//!  "capacityMbps":1000.0,"region":"eu-west","isp":["telecom"],
//!  "updatedAt":"2026-11-22T07:00:00Z","version":"0.1.0","restarts":2}
//! ```
//!
//! | field | type, unit | required | default | meaning |
//! |---|---|---|---|---|
//! | `freeTraffic` | number, Mbps, one decimal, finite, ≥ 0 | yes | — | traffic the host can still take: capacity minus the measured rate |
//! | `restAddr` | string, `ip:port` | yes | — | the agent's HTTP API (`/ice`, `/turncredential`); a unicast IP literal and a port other than 0, never a host name or URL |
//! | `turnUris` | array of strings, TURN/STUN URIs | no | `[]` | what clients are given to reach the host |
//! | `realm` | string | no | `""` | the TURN realm |
//! | `capacityMbps` | number, Mbps | no | `0` (unknown) | the host's configured capacity |
//! | `region` | string | no | `""` (none) | matched against a pick's preferred region |
//! | `isp` | array of strings | no | `[]` (every ISP) | the ISPs the host serves; matched against a pick's ISP |
//! | `updatedAt` | string, RFC 3339 UTC | no | `""` | when the agent wrote this record |
//! | `version` | string | no | `""` | the agent version that wrote it |
//! | `restarts` | integer, count | no | `0` | turnserver restarts since the agent started |
//!
//! `freeTraffic` and `restAddr` are what existing signalling servers read;
//! everything else is additive. Readers ignore fields they do not know, so
//! newer agents can add fields without breaking older allocators. Every
//! string (and list item) is at most [`PayloadLimits::max_string_chars`]
//! characters, every list at most [`PayloadLimits::max_list_items`] items,
//! and the whole record at most [`PayloadLimits::max_payload_bytes`]; a
//! record that breaks any rule is skipped whole, with a rate-limited
//! warning naming the node.
//!
//! Anyone who can write a znode controls its payload (ZooKeeper requires no
//! ACL by default), so the reader treats it as hostile:
//! [`HostPayload::decode`] refuses a payload over [`PayloadLimits`] before
//! it is kept, and [`LogBudget`] bounds how often such refusals are logged.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::log_safe::LogSafe;

/// One host record; the fields, units and defaults are in the
/// [module documentation](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPayload {
    /// Mbps the host can still take, one decimal, never negative.
    pub free_traffic: f64,
    /// `ip:port` of the host's HTTP API.
    pub rest_addr: String,
    #[serde(default)]
    pub turn_uris: Vec<String>,
    #[serde(default)]
    pub realm: String,
    #[serde(default)]
    pub capacity_mbps: f64,
    #[serde(default)]
    pub region: String,
    /// ISPs this host serves; empty means every ISP.
    #[serde(default)]
    pub isp: Vec<String>,
    /// RFC 3339.
    #[serde(default)]
    pub updated_at: String,
    /// Agent version that wrote the payload.
    #[serde(default)]
    pub version: String,
    /// turnserver restarts since the agent started.
    #[serde(default)]
    pub restarts: u64,
    /// Allocations coturn holds now (its CLI's `total-current-allocs`);
    /// absent while the agent cannot ask coturn, and from older agents.
    /// The allocator's least-loaded strategy reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u64>,
}

/// How much of the fleet's data a reader keeps: a payload, or a host, over
/// a cap is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Bytes of one znode's data, checked before it is parsed.
    pub max_payload_bytes: usize,
    /// Characters of any one string field (and of each list item).
    pub max_string_chars: usize,
    /// Items of any one list field.
    pub max_list_items: usize,
    /// Hosts in a view; nodes past this count are skipped.
    pub max_hosts: usize,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        PayloadLimits {
            max_payload_bytes: 16 * 1024,
            max_string_chars: 256,
            max_list_items: 32,
            max_hosts: 100_000,
        }
    }
}

/// The most Mbps a record may state (10 Tbps): far above any host, and
/// low enough that the allocator's sums over a fleet stay finite.
pub const MAX_MBPS: f64 = 1e7;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {bytes} bytes is over the cap of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("payload is not the expected JSON: {0}")]
    Json(String),
    #[error("freeTraffic must be a number from 0 to {MAX_MBPS} (Mbps)")]
    BadFreeTraffic,
    #[error("capacityMbps must be a number from 0 to {MAX_MBPS} (Mbps)")]
    BadCapacity,
    #[error("restAddr `{}` is not a unicast ip:port address", LogSafe::new(.0))]
    BadRestAddr(String),
    #[error("{field} is longer than {max} characters")]
    StringTooLong { field: &'static str, max: usize },
    #[error("{field} has more than {max} items")]
    ListTooLong { field: &'static str, max: usize },
}

impl HostPayload {
    /// Parses and checks a payload read from ZooKeeper with the default
    /// [`PayloadLimits`].
    pub fn parse(bytes: &[u8]) -> Result<HostPayload, PayloadError> {
        HostPayload::decode(bytes, &PayloadLimits::default())
    }

    /// Parses and checks a payload read from ZooKeeper: the size is checked
    /// before parsing, then every string and list against `limits`, and
    /// `restAddr` must be a unicast `ip:port` (no host name, no URL).
    pub fn decode(bytes: &[u8], limits: &PayloadLimits) -> Result<HostPayload, PayloadError> {
        if bytes.len() > limits.max_payload_bytes {
            return Err(PayloadError::TooLarge {
                bytes: bytes.len(),
                max: limits.max_payload_bytes,
            });
        }
        let payload: HostPayload = serde_json::from_slice(bytes).map_err(|error| {
            // serde_json's message can quote the input: keep only where and what kind.
            PayloadError::Json(format!(
                "{:?} error at line {} column {}",
                error.classify(),
                error.line(),
                error.column()
            ))
        })?;
        payload.check(limits)?;
        Ok(payload)
    }

    fn check(&self, limits: &PayloadLimits) -> Result<(), PayloadError> {
        let string = |field: &'static str, value: &str| {
            if value.chars().count() > limits.max_string_chars {
                Err(PayloadError::StringTooLong {
                    field,
                    max: limits.max_string_chars,
                })
            } else {
                Ok(())
            }
        };
        let list = |field: &'static str, values: &[String]| {
            if values.len() > limits.max_list_items {
                return Err(PayloadError::ListTooLong {
                    field,
                    max: limits.max_list_items,
                });
            }
            values.iter().try_for_each(|value| string(field, value))
        };
        string("restAddr", &self.rest_addr)?;
        string("realm", &self.realm)?;
        string("region", &self.region)?;
        string("updatedAt", &self.updated_at)?;
        string("version", &self.version)?;
        list("turnUris", &self.turn_uris)?;
        list("isp", &self.isp)?;
        let mbps = |value: f64| (0.0..=MAX_MBPS).contains(&value);
        if !mbps(self.free_traffic) {
            return Err(PayloadError::BadFreeTraffic);
        }
        if !mbps(self.capacity_mbps) {
            return Err(PayloadError::BadCapacity);
        }
        if self.rest_socket_addr().is_none() {
            return Err(PayloadError::BadRestAddr(self.rest_addr.clone()));
        }
        Ok(())
    }

    /// `restAddr` as an address to connect to: a unicast IP and a port
    /// other than 0, or `None`.
    pub fn rest_socket_addr(&self) -> Option<SocketAddr> {
        let addr: SocketAddr = self.rest_addr.parse().ok()?;
        let ip = addr.ip().to_canonical();
        let unicast = !ip.is_unspecified()
            && !ip.is_multicast()
            && ip != std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
        (unicast && addr.port() != 0).then_some(SocketAddr::new(ip, addr.port()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// At most `per_window` log lines per `window` for one kind of repeated
/// warning (a skipped record, a failed host), so hostile data re-read on
/// every re-list or request cannot flood the log. Time is a parameter.
#[derive(Debug)]
pub struct LogBudget {
    per_window: u32,
    window: Duration,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const fn new(per_window: u32, window: Duration) -> LogBudget {
        LogBudget {
            per_window,
            window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged at `now`, `n` being the lines
    /// suppressed since the last one logged; `None` to stay quiet.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Rounds Mbps to one decimal and floors at zero, as published.
pub fn round_mbps(mbps: f64) -> f64 {
    if mbps.is_finite() && mbps > 0.0 {
        (mbps * 10.0).round() / 10.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HostPayload {
        HostPayload {
            free_traffic: 812.4,
            rest_addr: "192.0.2.10:8086".into(),
            turn_uris: vec!["turn:192.0.2.10:3478?transport=udp".into()],
            realm: "example.org".into(),
            capacity_mbps: 1000.0,
            region: "eu-west".into(),
            isp: vec!["telecom".into()],
            updated_at: "2026-11-22T07:00:00Z".into(),
            version: "0.1.0".into(),
            restarts: 2,
            allocations: None,
        }
    }

    #[test]
    fn round_trips_with_the_field_names_existing_readers_use() {
        let bytes = sample().to_json();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["freeTraffic"], 812.4);
        assert_eq!(value["restAddr"], "192.0.2.10:8086");
        assert_eq!(value["capacityMbps"], 1000.0);
        assert_eq!(HostPayload::parse(&bytes).unwrap(), sample());
    }

    #[test]
    fn old_minimal_payloads_and_unknown_fields_are_accepted() {
        let payload =
            HostPayload::parse(br#"{"freeTraffic":5,"restAddr":"10.0.0.1:80","future":true}"#)
                .unwrap();
        assert_eq!(payload.free_traffic, 5.0);
        assert!(payload.isp.is_empty());
    }

    #[test]
    fn malformed_payloads_are_errors() {
        for bad in [
            &b"not json"[..],
            br#"{"restAddr":"10.0.0.1:80"}"#,
            br#"{"freeTraffic":-1,"restAddr":"10.0.0.1:80"}"#,
            br#"{"freeTraffic":1,"restAddr":"nowhere"}"#,
            br#"{"freeTraffic":"1","restAddr":"10.0.0.1:80"}"#,
            // Sums of these over a fleet would be infinite.
            br#"{"freeTraffic":1.7e308,"restAddr":"10.0.0.1:80"}"#,
            br#"{"freeTraffic":1,"capacityMbps":1e300,"restAddr":"10.0.0.1:80"}"#,
            br#"{"freeTraffic":1,"capacityMbps":-5,"restAddr":"10.0.0.1:80"}"#,
        ] {
            assert!(
                HostPayload::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn limits() -> PayloadLimits {
        PayloadLimits {
            max_payload_bytes: 200,
            max_string_chars: 12,
            max_list_items: 2,
            max_hosts: 10,
        }
    }

    #[test]
    fn payloads_over_a_cap_are_refused_by_kind() {
        let limits = limits();
        let ok = br#"{"freeTraffic":1,"restAddr":"10.0.0.1:80","isp":["a","b"]}"#;
        assert!(HostPayload::decode(ok, &limits).is_ok());
        let table: &[(&[u8], PayloadError)] = &[
            (
                &[b' '; 201],
                PayloadError::TooLarge {
                    bytes: 201,
                    max: 200,
                },
            ),
            (
                br#"{"freeTraffic":1,"restAddr":"10.0.0.1:80","region":"1234567890123"}"#,
                PayloadError::StringTooLong {
                    field: "region",
                    max: 12,
                },
            ),
            (
                br#"{"freeTraffic":1,"restAddr":"10.0.0.1:80","isp":["a","b","c"]}"#,
                PayloadError::ListTooLong {
                    field: "isp",
                    max: 2,
                },
            ),
            (
                br#"{"freeTraffic":1,"restAddr":"10.0.0.1:80","turnUris":["turn:123456789"]}"#,
                PayloadError::StringTooLong {
                    field: "turnUris",
                    max: 12,
                },
            ),
        ];
        for (bytes, expected) in table {
            assert_eq!(
                HostPayload::decode(bytes, &limits).unwrap_err(),
                *expected,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn rest_addr_must_be_a_unicast_ip_and_port() {
        for bad in [
            "0.0.0.0:80",
            "[::]:80",
            "10.0.0.1:0",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "turn.example.org:80",
            "http://10.0.0.1:80/",
            "10.0.0.1:80/admin",
        ] {
            let json = format!(r#"{{"freeTraffic":1,"restAddr":"{bad}"}}"#);
            assert!(
                matches!(
                    HostPayload::parse(json.as_bytes()),
                    Err(PayloadError::BadRestAddr(_))
                ),
                "{bad}"
            );
        }
        let mapped =
            HostPayload::parse(br#"{"freeTraffic":1,"restAddr":"[::ffff:10.0.0.1]:80"}"#).unwrap();
        assert_eq!(
            mapped.rest_socket_addr(),
            Some("10.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn errors_never_echo_a_long_or_hostile_value() {
        let hostile = format!(r"\u001b[31m{}", "x".repeat(10_000));
        let json = format!(r#"{{"freeTraffic":1,"restAddr":"{hostile}"}}"#);
        let limits = PayloadLimits {
            max_payload_bytes: 1 << 20,
            max_string_chars: 1 << 20,
            ..PayloadLimits::default()
        };
        let shown = HostPayload::decode(json.as_bytes(), &limits)
            .unwrap_err()
            .to_string();
        assert!(shown.len() < 400, "{shown}");
        assert!(!shown.contains('\x1b'), "{shown}");
        let shown = HostPayload::parse(br#"{"freeTraffic":"\u001b[2J secret"}"#)
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn log_budget_allows_a_burst_per_window_and_counts_the_rest() {
        let start = Instant::now();
        let mut budget = LogBudget::new(2, Duration::from_secs(60));
        assert_eq!(budget.admit(start), Some(0));
        assert_eq!(budget.admit(start), Some(0));
        for _ in 0..1000 {
            assert_eq!(budget.admit(start + Duration::from_secs(1)), None);
        }
        assert_eq!(budget.admit(start + Duration::from_secs(60)), Some(1000));
        assert_eq!(budget.admit(start + Duration::from_secs(61)), Some(0));
        assert_eq!(budget.admit(start + Duration::from_secs(62)), None);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_and_respects_the_caps(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let limits = limits();
            if let Ok(payload) = HostPayload::decode(&bytes, &limits) {
                proptest::prop_assert!(bytes.len() <= limits.max_payload_bytes);
                proptest::prop_assert!(payload.isp.len() <= limits.max_list_items);
                proptest::prop_assert!(payload.rest_socket_addr().is_some());
            }
        }
    }

    #[test]
    fn rounding() {
        assert_eq!(round_mbps(812.449), 812.4);
        assert_eq!(round_mbps(-3.0), 0.0);
        assert_eq!(round_mbps(f64::NAN), 0.0);
    }
}
