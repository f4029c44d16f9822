//! The payload of a host's znode: written by the agent's registry, read by
//! the allocator. One schema for both, so they cannot drift.
//!
//! `freeTraffic` and `restAddr` are what existing signalling servers read;
//! everything else is additive. Readers ignore fields they do not know, so
//! newer agents can add fields without breaking older allocators.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not the expected JSON: {0}")]
    Json(String),
    #[error("freeTraffic must be a finite, non-negative number")]
    BadFreeTraffic,
    #[error("restAddr `{0}` is not an ip:port address")]
    BadRestAddr(String),
}

impl HostPayload {
    /// Parses and checks a payload read from ZooKeeper.
    pub fn parse(bytes: &[u8]) -> Result<HostPayload, PayloadError> {
        let payload: HostPayload =
            serde_json::from_slice(bytes).map_err(|error| PayloadError::Json(error.to_string()))?;
        if !payload.free_traffic.is_finite() || payload.free_traffic < 0.0 {
            return Err(PayloadError::BadFreeTraffic);
        }
        if payload.rest_addr.parse::<SocketAddr>().is_err() {
            return Err(PayloadError::BadRestAddr(payload.rest_addr));
        }
        Ok(payload)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
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
        ] {
            assert!(
                HostPayload::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rounding() {
        assert_eq!(round_mbps(812.449), 812.4);
        assert_eq!(round_mbps(-3.0), 0.0);
        assert_eq!(round_mbps(f64::NAN), 0.0);
    }
}
