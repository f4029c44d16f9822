//! The default of every key, in one place: what an absent key means.

use std::time::Duration;

use super::{
    CredentialMode, LogFormat, RawAccess, RawAgent, RawAllowEntry, RawApi, RawCredentials,
    RawDrain, RawHealth, RawTraffic, RawTurnserver, RawZookeeper, ServerLimits, TrafficDirection,
    TrafficSource,
};

impl Default for RawAgent {
    fn default() -> Self {
        RawAgent {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            shutdown_timeout: "10s".into(),
        }
    }
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            listen: "0.0.0.0:8086".into(),
            advertise: None,
            turn_uris: Vec::new(),
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            header_read_timeout: "5s".into(),
            request_timeout: "10s".into(),
            max_connections_per_address: 32,
            tls: None,
            cors_origins: Vec::new(),
            cors_max_age: "10m".into(),
        }
    }
}

impl Default for RawTurnserver {
    fn default() -> Self {
        RawTurnserver {
            binary: "turnserver".into(),
            config_file: None,
            listening_ip: None,
            listening_port: 3478,
            relay_ip: None,
            min_port: 49152,
            max_port: 65535,
            realm: None,
            userdb: "/var/lib/turn-agent/turndb".into(),
            pidfile: "/run/turn-agent/turnserver.pid".into(),
            extra_args: Vec::new(),
            restart_delay_min: "100ms".into(),
            restart_delay_max: "30s".into(),
            stable_after: "60s".into(),
            stop_timeout: "5s".into(),
            probe_interval: "1s".into(),
            probe_timeout: "500ms".into(),
            probe_failures: 3,
            startup_timeout: "10s".into(),
            pass_through_flags: Vec::new(),
            control: "on".into(),
            control_poll_interval: "2s".into(),
            total_quota: 0,
            user_quota: 0,
            max_bps: 0,
            bps_capacity: 0,
        }
    }
}

impl Default for RawCredentials {
    fn default() -> Self {
        RawCredentials {
            mode: CredentialMode::LongTerm,
            rotate_interval: "1h".into(),
            lifetime: "2h".into(),
            grace: "60s".into(),
            max_ttl: "24h".into(),
            state_file: "/var/lib/turn-agent/credential.json".into(),
            turnadmin: "turnadmin".into(),
            database_args: Vec::new(),
            rotate_min_interval: "10s".into(),
            max_live_secrets: 32,
        }
    }
}

impl Default for RawZookeeper {
    fn default() -> Self {
        RawZookeeper {
            connect: None,
            path: "/turn/servers".into(),
            node: None,
            session_timeout: "10s".into(),
            publish_interval: "10s".into(),
            max_silence: "60s".into(),
            auth_file: None,
            region: String::new(),
            isp: Vec::new(),
        }
    }
}

impl Default for RawTraffic {
    fn default() -> Self {
        RawTraffic {
            interface: None,
            capacity_mbps: 1000.0,
            direction: TrafficDirection::Max,
            hysteresis_percent: 5.0,
            smoothing: 0.0,
            max_allocations: None,
            source: TrafficSource::Interface,
            headroom_hysteresis_percent: 100.0,
        }
    }
}

pub(super) fn default_client_token_role() -> String {
    "user".into()
}

pub(super) fn default_client_token_max_lifetime() -> String {
    "10m".into()
}

impl Default for RawAccess {
    fn default() -> Self {
        RawAccess {
            default_role: "user".into(),
            allow: vec![
                RawAllowEntry {
                    addr: "127.0.0.1".into(),
                    role: Some("admin".into()),
                },
                RawAllowEntry {
                    addr: "::1".into(),
                    role: Some("admin".into()),
                },
            ],
            trusted_proxies: Vec::new(),
            roles: Vec::new(),
            tokens: Vec::new(),
            rate_limit_per_second: 20.0,
            rate_limit_burst: 40,
            rate_limit_ipv6_prefix: 64,
            client_tokens: None,
        }
    }
}

impl Default for RawDrain {
    fn default() -> Self {
        RawDrain {
            idle_mbps: 1.0,
            quiet_period: "30s".into(),
            timeout: "10m".into(),
        }
    }
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            self_check_interval: "30s".into(),
            self_check_failures: 2,
            self_check_timeout: "3s".into(),
        }
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_connections_per_address: 32,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}
