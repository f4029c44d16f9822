//! `TURN_AGENT_<SECTION>_<KEY>` environment variables laid over the file.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::{ConfigProblem, SECTIONS};

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "TURN_AGENT_";

/// Lays `TURN_AGENT_<SECTION>_<KEY>=value` over the file's table.
///
/// The value is read as a TOML value when it is one (`3478`, `true`,
/// `["-v"]`, `"quoted"`), and as a plain string otherwise (`10s`,
/// `127.0.0.1:9000`).
pub(super) fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (OsString, OsString)>,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in env {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        match value.into_string() {
            // A line break would end the value early in the TOML it is read
            // as, silently dropping the rest.
            Ok(value) if value.contains(char::is_control) => problems.push(ConfigProblem {
                key: name.to_string(),
                message: "value holds a control character (a line break, NUL, ...)".into(),
            }),
            Ok(value) => {
                overrides.insert(name.to_string(), value);
            }
            Err(_) => problems.push(ConfigProblem {
                key: name.to_string(),
                message: "value is not valid UTF-8".into(),
            }),
        }
    }
    for (name, value) in overrides {
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section_name, key)) = rest.split_once('_') else {
            problems.push(ConfigProblem {
                key: name,
                message: "expected TURN_AGENT_<SECTION>_<KEY>".into(),
            });
            continue;
        };
        if !SECTIONS.contains(&section_name) || key.is_empty() {
            problems.push(ConfigProblem {
                key: name,
                message: format!(
                    "unknown section `{section_name}`, expected one of {}",
                    SECTIONS.join(", ")
                ),
            });
            continue;
        }
        let parsed = format!("value = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut wrapper| wrapper.remove("value"))
            .unwrap_or(toml::Value::String(value));
        let entry = table
            .entry(section_name.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(section_table) => {
                section_table.insert(key.to_string(), parsed);
            }
            None => problems.push(ConfigProblem {
                key: name,
                message: format!("section `{section_name}` in the file is not a table"),
            }),
        }
    }
}
