//! `[zookeeper]`: where the host is published.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::default_host_name;
use super::validate::Validator;

#[derive(Debug, Clone, PartialEq)]
pub struct ZookeeperConfig {
    /// Ensemble connect string with optional chroot; `None` turns publishing off.
    pub connect: Option<String>,
    pub path: String,
    pub node: String,
    pub session_timeout: Duration,
    pub publish_interval: Duration,
    pub max_silence: Duration,
    pub auth_file: Option<PathBuf>,
    /// Published in the payload for the allocator's preferences.
    pub region: String,
    pub isp: Vec<String>,
}

impl ZookeeperConfig {
    /// `(hosts, chroot)` of the connect string; the chroot is `""` when absent.
    pub fn hosts_and_chroot(&self) -> Option<(&str, &str)> {
        let connect = self.connect.as_deref()?;
        Some(match connect.find('/') {
            Some(index) => (&connect[..index], &connect[index..]),
            None => (connect, ""),
        })
    }

    /// Full path of the parent of the host znodes, chroot included.
    pub fn base_path(&self) -> String {
        let chroot = self.hosts_and_chroot().map_or("", |(_, chroot)| chroot);
        format!("{chroot}{}", self.path)
    }

    pub fn node_path(&self) -> String {
        format!("{}/{}", self.base_path(), self.node)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawZookeeper {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub session_timeout: String,
    pub publish_interval: String,
    pub max_silence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_file: Option<String>,
    pub region: String,
    pub isp: Vec<String>,
}

pub(super) fn validate_zookeeper(v: &mut Validator, raw: &RawZookeeper) -> ZookeeperConfig {
    let connect = raw.connect.clone().filter(|text| !text.trim().is_empty());
    if let Some(text) = &connect {
        if let Err(error) = crate::zookeeper::parse_connect_string(text) {
            v.problem("zookeeper.connect", error.to_string());
        }
    }
    if let Err(error) = crate::zookeeper::validate_path(&raw.path) {
        v.problem("zookeeper.path", error.to_string());
    }
    let node = raw.node.clone().unwrap_or_else(default_host_name);
    if let Err(error) = crate::zookeeper::validate_node_name(&node) {
        v.problem("zookeeper.node", error.to_string());
    }
    let session_timeout = v.positive_duration("zookeeper.session_timeout", &raw.session_timeout);
    let publish_interval = v.positive_duration("zookeeper.publish_interval", &raw.publish_interval);
    let max_silence = v.positive_duration("zookeeper.max_silence", &raw.max_silence);
    if max_silence < publish_interval {
        v.problem(
            "zookeeper.max_silence",
            "must not be less than publish_interval",
        );
    }
    let auth_file = raw.auth_file.as_deref().map(|text| {
        let path = v.path("zookeeper.auth_file", text);
        if path.is_absolute() && !path.is_file() {
            v.problem("zookeeper.auth_file", format!("`{text}` does not exist"));
        }
        path
    });
    ZookeeperConfig {
        connect,
        path: raw.path.clone(),
        node,
        session_timeout,
        publish_interval,
        max_silence,
        auth_file,
        region: raw.region.clone(),
        isp: raw.isp.clone(),
    }
}
