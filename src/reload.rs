//! What a SIGHUP may change, and when.
//!
//! coturn cannot re-read its configuration, so a key reaches the running
//! host in one of three ways: at once (the agent's own tasks pick it up),
//! through a drain and a turnserver restart, or only at the next agent
//! start (sockets and sessions the agent does not re-open). Every key is
//! classified here, and the configuration the tasks see is built by taking
//! each key from the file version whose changes are in effect for its
//! class. Keeping that in one table keeps the logged outcome and the applied
//! configuration from disagreeing.

use std::collections::BTreeMap;

use crate::config::{self, Config, ConfigError, RawConfig};

/// When a changed key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Applied by the running tasks at once.
    Live,
    /// Needs a new turnserver: applied after a drain.
    Turnserver,
    /// Needs a new agent process.
    AgentRestart,
}

/// The class of `section.key`. Unknown keys wait for an agent restart: that
/// is never wrong, only slow.
pub fn effect(key: &str) -> Effect {
    let (section, name) = key.split_once('.').unwrap_or((key, ""));
    match (section, name) {
        ("agent", "log_level" | "shutdown_timeout") => Effect::Live,
        ("api", "turn_uris" | "cors_origins" | "cors_max_age") => Effect::Live,
        (
            "turnserver",
            "probe_interval"
            | "probe_timeout"
            | "probe_failures"
            | "startup_timeout"
            | "stop_timeout"
            | "control_poll_interval"
            // Changed in the running turnserver through its CLI (`cc`).
            | "total_quota"
            | "user_quota"
            | "max_bps"
            | "bps_capacity",
        ) => Effect::Live,
        ("turnserver", "restart_delay_min" | "restart_delay_max" | "stable_after") => {
            Effect::AgentRestart
        }
        ("turnserver", _) => Effect::Turnserver,
        ("credentials", "mode" | "database_args") => Effect::Turnserver,
        ("credentials", "state_file") => Effect::AgentRestart,
        ("credentials", _) => Effect::Live,
        ("zookeeper", "publish_interval" | "max_silence" | "region" | "isp") => Effect::Live,
        ("traffic" | "access" | "health" | "drain", _) => Effect::Live,
        _ => Effect::AgentRestart,
    }
}

/// The outcome of one re-read, for the log and for the agent to act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Reread {
    /// Keys that differ from the previous read of the file.
    pub changed: Vec<String>,
    /// Of those, applied at once.
    pub live: Vec<String>,
    /// Keys waiting for a turnserver restart (all of them, not only the ones
    /// changed by this read).
    pub turnserver: Vec<String>,
    /// Keys waiting for an agent restart.
    pub agent_restart: Vec<String>,
    /// The configuration the tasks run with from now on.
    pub apply_now: Config,
}

impl Reread {
    pub fn needs_turnserver_restart(&self) -> bool {
        !self.turnserver.is_empty()
    }
}

/// The file versions behind the running configuration.
#[derive(Debug, Clone)]
pub struct Reloader {
    /// What the agent started with: the source of agent-restart keys.
    started: RawConfig,
    /// What the running turnserver was started with.
    turnserver: RawConfig,
    /// The last valid read of the file.
    file: RawConfig,
}

impl Reloader {
    pub fn new(started: RawConfig) -> Reloader {
        Reloader {
            turnserver: started.clone(),
            file: started.clone(),
            started,
        }
    }

    /// Takes a new read of the file. An invalid combination leaves
    /// everything as it was.
    pub fn reread(&mut self, new: RawConfig) -> Result<Reread, ConfigError> {
        let apply_now = self.compose(&new, &self.turnserver)?;
        let changed = config::changed_keys(&self.file, &new);
        let pending = |since: &RawConfig, class: Effect| -> Vec<String> {
            config::changed_keys(since, &new)
                .into_iter()
                .filter(|key| effect(key) == class)
                .collect()
        };
        let reread = Reread {
            live: changed
                .iter()
                .filter(|key| effect(key) == Effect::Live)
                .cloned()
                .collect(),
            turnserver: pending(&self.turnserver, Effect::Turnserver),
            agent_restart: pending(&self.started, Effect::AgentRestart),
            changed,
            apply_now,
        };
        self.file = new;
        Ok(reread)
    }

    /// The configuration for a new turnserver: the last file read with
    /// everything but agent-restart keys. From now on that is what the
    /// running turnserver has.
    pub fn turnserver_restart(&mut self) -> Result<Config, ConfigError> {
        let config = self.compose(&self.file, &self.file)?;
        self.turnserver = self.file.clone();
        Ok(config)
    }

    /// Live keys from `live`, turnserver keys from `turnserver`, the rest
    /// from the start.
    fn compose(&self, live: &RawConfig, turnserver: &RawConfig) -> Result<Config, ConfigError> {
        let sources = [
            (Effect::Live, config::flat_keys(live)),
            (Effect::Turnserver, config::flat_keys(turnserver)),
            (Effect::AgentRestart, config::flat_keys(&self.started)),
        ];
        let mut keys = BTreeMap::new();
        for (class, source) in sources {
            keys.extend(source.into_iter().filter(|(key, _)| effect(key) == class));
        }
        config::validate(&config::from_flat_keys(keys)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validation resolves `turnserver` and `turnadmin` on PATH: without
    /// coturn installed these tests cannot run, and say so.
    fn needs_coturn() {
        for binary in ["turnserver", "turnadmin"] {
            assert!(
                which::which(binary).is_ok(),
                "this test needs coturn's `{binary}` on PATH (scripts/install-deps.sh installs it)"
            );
        }
    }

    fn raw(lines: &str) -> RawConfig {
        needs_coturn();
        config::parse_raw(
            &format!("[turnserver]\nrealm = \"example.org\"\n{lines}"),
            std::iter::empty(),
        )
        .unwrap()
    }

    #[test]
    fn every_documented_key_has_a_deliberate_class() {
        assert_eq!(effect("traffic.capacity_mbps"), Effect::Live);
        assert_eq!(effect("access.allow"), Effect::Live);
        assert_eq!(effect("access.client_tokens"), Effect::Live);
        assert_eq!(
            effect("access.client_tokens.public_key_files"),
            Effect::Live
        );
        assert_eq!(effect("api.cors_origins"), Effect::Live);
        assert_eq!(effect("api.cors_max_age"), Effect::Live);
        assert_eq!(effect("credentials.rotate_interval"), Effect::Live);
        assert_eq!(effect("agent.log_level"), Effect::Live);
        for quota in ["total_quota", "user_quota", "max_bps", "bps_capacity"] {
            assert_eq!(effect(&format!("turnserver.{quota}")), Effect::Live);
        }
        assert_eq!(effect("turnserver.listening_port"), Effect::Turnserver);
        assert_eq!(effect("turnserver.realm"), Effect::Turnserver);
        assert_eq!(effect("turnserver.extra_args"), Effect::Turnserver);
        assert_eq!(effect("credentials.mode"), Effect::Turnserver);
        assert_eq!(effect("api.listen"), Effect::AgentRestart);
        assert_eq!(effect("zookeeper.connect"), Effect::AgentRestart);
        assert_eq!(effect("nonsense"), Effect::AgentRestart);
    }

    #[test]
    fn rereading_the_same_file_changes_nothing() {
        for text in [
            include_str!("../config/turn-agent.toml"),
            include_str!("../config/local.toml"),
        ] {
            needs_coturn();
            let started = config::parse_raw(text, std::iter::empty()).unwrap();
            let running = config::validate(&started).unwrap();
            let mut reloader = Reloader::new(started.clone());
            let reread = reloader.reread(started).unwrap();
            assert!(reread.changed.is_empty());
            assert!(!reread.needs_turnserver_restart());
            assert_eq!(reread.apply_now, running);
            assert_eq!(reloader.turnserver_restart().unwrap(), running);
        }
    }

    #[test]
    fn live_keys_apply_at_once() {
        let mut reloader = Reloader::new(raw(""));
        let reread = reloader
            .reread(raw("[traffic]\ncapacity_mbps = 250.0"))
            .unwrap();
        assert_eq!(reread.changed, vec!["traffic.capacity_mbps"]);
        assert_eq!(reread.live, vec!["traffic.capacity_mbps"]);
        assert!(!reread.needs_turnserver_restart());
        assert_eq!(reread.apply_now.traffic.capacity_mbps, 250.0);
    }

    #[test]
    fn turnserver_keys_wait_for_the_restart() {
        let mut reloader = Reloader::new(raw("listening_port = 3478"));
        let reread = reloader
            .reread(raw(
                "listening_port = 3479\n[traffic]\ncapacity_mbps = 250.0",
            ))
            .unwrap();
        assert_eq!(reread.turnserver, vec!["turnserver.listening_port"]);
        assert_eq!(reread.apply_now.turnserver.listening_port, 3478);
        assert_eq!(reread.apply_now.traffic.capacity_mbps, 250.0);

        // A later read that changes something else keeps the restart due.
        let reread = reloader
            .reread(raw(
                "listening_port = 3479\n[traffic]\ncapacity_mbps = 300.0",
            ))
            .unwrap();
        assert_eq!(reread.changed, vec!["traffic.capacity_mbps"]);
        assert_eq!(reread.turnserver, vec!["turnserver.listening_port"]);

        let restarted = reloader.turnserver_restart().unwrap();
        assert_eq!(restarted.turnserver.listening_port, 3479);
        assert_eq!(restarted.traffic.capacity_mbps, 300.0);
        let reread = reloader
            .reread(raw(
                "listening_port = 3479\n[traffic]\ncapacity_mbps = 300.0",
            ))
            .unwrap();
        assert!(!reread.needs_turnserver_restart());
        assert_eq!(reread.apply_now.turnserver.listening_port, 3479);
    }

    #[test]
    fn reverting_a_turnserver_key_cancels_the_restart() {
        let mut reloader = Reloader::new(raw("listening_port = 3478"));
        assert!(reloader
            .reread(raw("listening_port = 3479"))
            .unwrap()
            .needs_turnserver_restart());
        let reread = reloader.reread(raw("listening_port = 3478")).unwrap();
        assert!(!reread.needs_turnserver_restart());
        assert_eq!(reread.changed, vec!["turnserver.listening_port"]);
    }

    #[test]
    fn agent_restart_keys_are_reported_until_the_restart() {
        let mut reloader = Reloader::new(raw(""));
        let reread = reloader
            .reread(raw("[api]\nlisten = \"127.0.0.1:9\""))
            .unwrap();
        assert_eq!(reread.agent_restart, vec!["api.listen"]);
        assert_ne!(reread.apply_now.api.listen.port(), 9);
        let reread = reloader
            .reread(raw(
                "[api]\nlisten = \"127.0.0.1:9\"\n[traffic]\ncapacity_mbps = 5.0",
            ))
            .unwrap();
        assert_eq!(reread.agent_restart, vec!["api.listen"]);
        let restarted = reloader.turnserver_restart().unwrap();
        assert_ne!(restarted.api.listen.port(), 9);
    }

    #[test]
    fn composing_keeps_keys_that_are_unset() {
        // An optional key set only in the new file appears once the class
        // allows it, and is absent before.
        let mut reloader = Reloader::new(raw(""));
        let reread = reloader.reread(raw("relay_ip = \"127.0.0.2\"")).unwrap();
        assert_eq!(reread.apply_now.turnserver.relay_ip, None);
        assert_eq!(
            reloader.turnserver_restart().unwrap().turnserver.relay_ip,
            Some("127.0.0.2".parse().unwrap())
        );
    }
}
