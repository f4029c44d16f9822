//! Reading the file into the raw form, and the raw form as flat keys
//! (reload diffs) or redacted TOML (`check-config`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::env::apply_env_overrides;
use super::{ConfigError, ConfigProblem, RawConfig, SECTIONS};

/// The `section.key` names whose effective values differ between two loads.
pub fn changed_keys(old: &RawConfig, new: &RawConfig) -> Vec<String> {
    let (old, new) = (flat_keys(old), flat_keys(new));
    let mut changed: Vec<String> = old
        .iter()
        .filter(|(key, value)| new.get(*key) != Some(*value))
        .map(|(key, _)| key.clone())
        .collect();
    changed.extend(new.keys().filter(|key| !old.contains_key(*key)).cloned());
    changed.sort();
    changed
}

/// Every `section.key` of `raw` with its value; keys left unset (`None`)
/// are absent.
pub fn flat_keys(raw: &RawConfig) -> BTreeMap<String, toml::Value> {
    let mut keys = BTreeMap::new();
    if let Ok(toml::Value::Table(sections)) = toml::Value::try_from(raw) {
        for (section_name, section_value) in sections {
            if let toml::Value::Table(section_table) = section_value {
                for (key, value) in section_table {
                    keys.insert(format!("{section_name}.{key}"), value);
                }
            }
        }
    }
    keys
}

/// The inverse of [`flat_keys`].
pub fn from_flat_keys(keys: BTreeMap<String, toml::Value>) -> Result<RawConfig, ConfigError> {
    let mut sections = toml::Table::new();
    for (name, value) in keys {
        let Some((section, key)) = name.split_once('.') else {
            continue;
        };
        if let toml::Value::Table(table) = sections
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            table.insert(key.to_string(), value);
        }
    }
    toml::Value::Table(sections)
        .try_into()
        .map_err(|error: toml::de::Error| ConfigError::single("", error.message().to_string()))
}

/// Reads `path` and lays the `TURN_AGENT_*` variables of `env` over it.
pub fn load_raw(
    path: &Path,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<RawConfig, ConfigError> {
    // A FIFO, a device or a huge file is refused before it is read.
    let text = crate::file_checks::read_limited_text(path, crate::file_checks::MAX_CONFIG_BYTES)
        .map_err(|error| ConfigError::single(path.display().to_string(), error.to_string()))?;
    parse_raw(&text, env).map_err(|mut error| {
        for problem in &mut error.problems {
            if problem.key.is_empty() {
                problem.key = path.display().to_string();
            }
        }
        error
    })
}

/// Parses file text with environment overrides into the raw form.
pub fn parse_raw(
    text: &str,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<RawConfig, ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| ConfigError::single("", one_line(&error.to_string())))?;
    let mut problems = Vec::new();
    apply_env_overrides(&mut table, env, &mut problems);

    for name in table.keys() {
        if !SECTIONS.contains(&name.as_str()) {
            problems.push(ConfigProblem {
                key: name.clone(),
                message: format!("unknown section, expected one of {}", SECTIONS.join(", ")),
            });
        }
    }

    let mut raw = RawConfig::default();
    section(&table, "agent", &mut raw.agent, &mut problems);
    section(&table, "api", &mut raw.api, &mut problems);
    section(&table, "turnserver", &mut raw.turnserver, &mut problems);
    section(&table, "credentials", &mut raw.credentials, &mut problems);
    section(&table, "zookeeper", &mut raw.zookeeper, &mut problems);
    section(&table, "traffic", &mut raw.traffic, &mut problems);
    section(&table, "access", &mut raw.access, &mut problems);
    section(&table, "health", &mut raw.health, &mut problems);
    section(&table, "drain", &mut raw.drain, &mut problems);

    if problems.is_empty() {
        Ok(raw)
    } else {
        Err(ConfigError { problems })
    }
}

/// Deserializes one section on its own, so a fault in one section does not
/// hide the faults of the others.
fn section<T: DeserializeOwned>(
    table: &toml::Table,
    name: &str,
    slot: &mut T,
    problems: &mut Vec<ConfigProblem>,
) {
    let Some(value) = table.get(name) else {
        return;
    };
    if !value.is_table() {
        problems.push(ConfigProblem {
            key: name.into(),
            message: "must be a table".into(),
        });
        return;
    }
    match serde_path_to_error::deserialize::<_, T>(value.clone()) {
        Ok(parsed) => *slot = parsed,
        Err(error) => {
            let path = error.path().to_string();
            let key = if path == "." {
                name.to_string()
            } else {
                format!("{name}.{path}")
            };
            problems.push(ConfigProblem {
                key,
                message: one_line(&error.into_inner().to_string()),
            });
        }
    }
}

pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The effective configuration as TOML, with anything secret replaced by `***`.
pub fn render_effective(raw: &RawConfig) -> String {
    let mut value =
        toml::Value::try_from(raw).unwrap_or_else(|_| toml::Value::Table(Default::default()));
    redact(&mut value);
    toml::to_string_pretty(&value).unwrap_or_default()
}

pub(super) fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                let secret_key = ["secret", "password", "token"]
                    .iter()
                    .any(|word| key.contains(word))
                    && !key.ends_with("_file")
                    && key != "tokens";
                if secret_key {
                    *inner = toml::Value::String("***".into());
                } else {
                    redact(inner);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}
