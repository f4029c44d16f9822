//! `[access]`: who may call the API, and client tokens.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::validate::Validator;
use super::ConfigProblem;
use crate::access::{self, AccessPolicy, AddrPattern, Permission, Role};
use crate::secret::Secret;

/// Who may call the API, validated into an [`AccessPolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    pub policy: AccessPolicy,
    /// Requests per second per client address on `/turncredential` and
    /// `/ice`; 0 turns the limit off.
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: u32,
    /// IPv6 clients share one rate-limit budget per prefix of this length.
    pub rate_limit_ipv6_prefix: u8,
    /// Files holding secrets, checked for loose permissions at start.
    pub token_files: Vec<PathBuf>,
    /// Signed short-lived bearer tokens for browsers; `None`: off.
    pub client_tokens: Option<ClientTokensConfig>,
}

/// `[access.client_tokens]`, with the public keys read.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTokensConfig {
    pub public_key_files: Vec<PathBuf>,
    /// The PEM documents of `public_key_files` (public, not secrets), read
    /// at start and on every reload.
    pub public_keys: Vec<Vec<u8>>,
    /// What a token's `aud` must name: this host's API as `host:port`.
    pub audience: String,
    /// Index into the policy's roles.
    pub role: usize,
    pub max_lifetime: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllowEntry {
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub name: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub token_file: String,
    pub role: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccess {
    pub default_role: String,
    pub allow: Vec<RawAllowEntry>,
    pub trusted_proxies: Vec<String>,
    pub roles: Vec<RawRole>,
    pub tokens: Vec<RawToken>,
    pub rate_limit_per_second: f64,
    pub rate_limit_burst: i64,
    pub rate_limit_ipv6_prefix: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tokens: Option<RawClientTokens>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTokens {
    pub public_key_files: Vec<String>,
    /// Default: the advertised API address (`api.advertise`, else a
    /// concrete `api.listen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default = "super::defaults::default_client_token_role")]
    pub role: String,
    #[serde(default = "super::defaults::default_client_token_max_lifetime")]
    pub max_lifetime: String,
}

/// Validates an `[access]` section on its own, for the allocator service,
/// which shares the agent's access format.
pub fn validate_access_section(raw: &RawAccess) -> Result<AccessConfig, Vec<ConfigProblem>> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    let access = validate_access(&mut v, raw, None);
    if v.problems.is_empty() {
        Ok(access)
    } else {
        Err(v.problems)
    }
}

/// `api_address`: the default audience of client tokens.
pub(super) fn validate_access(
    v: &mut Validator,
    raw: &RawAccess,
    api_address: Option<String>,
) -> AccessConfig {
    let mut roles = access::builtin_roles();
    for (index, raw_role) in raw.roles.iter().enumerate() {
        if raw_role.name.trim().is_empty() {
            v.problem(&format!("access.roles[{index}].name"), "must not be empty");
            continue;
        }
        let mut permissions = std::collections::BTreeSet::new();
        for name in &raw_role.permissions {
            match Permission::parse(name) {
                Some(permission) => {
                    permissions.insert(permission);
                }
                None => v.problem(
                    &format!("access.roles[{index}].permissions"),
                    format!(
                        "unknown permission `{name}`, expected credential, ice, metrics, status or rotate"
                    ),
                ),
            }
        }
        let role = Role {
            name: raw_role.name.clone(),
            permissions,
        };
        match roles.iter_mut().find(|existing| existing.name == role.name) {
            Some(existing) => *existing = role,
            None => roles.push(role),
        }
    }
    let role_index = |name: &str| roles.iter().position(|role| role.name == name);
    if role_index(&raw.default_role).is_none() {
        v.problem(
            "access.default_role",
            format!("unknown role `{}`", raw.default_role),
        );
    }
    let mut allow = Vec::new();
    for (index, entry) in raw.allow.iter().enumerate() {
        let role_name = entry.role.as_deref().unwrap_or(&raw.default_role);
        match (AddrPattern::parse(&entry.addr), role_index(role_name)) {
            (Ok(pattern), Some(role)) => allow.push((pattern, role)),
            (Err(error), _) => v.problem(&format!("access.allow[{index}].addr"), error.to_string()),
            (_, None) => v.problem(
                &format!("access.allow[{index}].role"),
                format!("unknown role `{role_name}`"),
            ),
        }
    }
    let mut tokens = Vec::new();
    let mut token_files = Vec::new();
    for (index, token) in raw.tokens.iter().enumerate() {
        let key = format!("access.tokens[{index}].token_file");
        let path = v.path(&key, &token.token_file);
        match crate::file_checks::read_limited_text(
            &path,
            crate::file_checks::MAX_SECRET_FILE_BYTES,
        ) {
            Ok(text) if text.trim().len() >= 16 => match role_index(&token.role) {
                Some(role) => tokens.push((Secret::new(text.trim()), role)),
                None => v.problem(
                    &format!("access.tokens[{index}].role"),
                    format!("unknown role `{}`", token.role),
                ),
            },
            Ok(_) => v.problem(&key, "the token must be at least 16 characters"),
            Err(error) => v.problem(&key, format!("`{}` {error}", token.token_file)),
        }
        token_files.push(path);
    }
    let client_tokens = raw.client_tokens.as_ref().and_then(|client_tokens| {
        validate_client_tokens(
            v,
            client_tokens,
            role_index(&client_tokens.role),
            api_address,
        )
    });
    let mut trusted_proxies = Vec::new();
    for (index, text) in raw.trusted_proxies.iter().enumerate() {
        match AddrPattern::parse(text) {
            Ok(pattern) => trusted_proxies.push(pattern),
            Err(error) => v.problem(
                &format!("access.trusted_proxies[{index}]"),
                error.to_string(),
            ),
        }
    }
    if !(raw.rate_limit_per_second.is_finite() && raw.rate_limit_per_second >= 0.0) {
        v.problem(
            "access.rate_limit_per_second",
            "must be a number of at least 0 (0 turns the limit off)",
        );
    }
    let rate_limit_burst: u32 = v.at_least_one("access.rate_limit_burst", raw.rate_limit_burst);
    let rate_limit_ipv6_prefix = match u8::try_from(raw.rate_limit_ipv6_prefix) {
        Ok(prefix) if (1..=128).contains(&prefix) => prefix,
        _ => {
            v.problem(
                "access.rate_limit_ipv6_prefix",
                "must be a prefix length between 1 and 128",
            );
            64
        }
    };
    AccessConfig {
        policy: AccessPolicy {
            allow,
            roles,
            tokens,
            trusted_proxies,
        },
        rate_limit_per_second: raw.rate_limit_per_second,
        rate_limit_burst,
        rate_limit_ipv6_prefix,
        token_files,
        client_tokens,
    }
}

fn validate_client_tokens(
    v: &mut Validator,
    raw: &RawClientTokens,
    role: Option<usize>,
    api_address: Option<String>,
) -> Option<ClientTokensConfig> {
    let mut public_key_files = Vec::new();
    let mut public_keys = Vec::new();
    if raw.public_key_files.is_empty() {
        v.problem(
            "access.client_tokens.public_key_files",
            "must list at least one Ed25519 public key file (PEM)",
        );
    }
    for (index, text) in raw.public_key_files.iter().enumerate() {
        let key = format!("access.client_tokens.public_key_files[{index}]");
        let path = v.path(&key, text);
        match crate::file_checks::read_limited(&path, crate::file_checks::MAX_PEM_BYTES) {
            Ok(pem) => {
                let check = crate::client_token::ClientTokenVerifier::new(
                    std::slice::from_ref(&pem),
                    String::new(),
                    Duration::ZERO,
                );
                match check {
                    Ok(_) => public_keys.push(pem),
                    Err(error) => v.problem(&key, format!("`{text}`: {error}")),
                }
            }
            Err(error) => v.problem(&key, format!("cannot read `{text}`: {error}")),
        }
        public_key_files.push(path);
    }
    let audience = match (&raw.audience, api_address) {
        (Some(audience), _) if !audience.trim().is_empty() => Some(audience.trim().to_string()),
        (Some(_), _) => {
            v.problem("access.client_tokens.audience", "must not be empty");
            None
        }
        (None, Some(address)) => Some(address),
        (None, None) => {
            v.problem(
                "access.client_tokens.audience",
                "must be set when the API has no advertised address (api.advertise or a concrete api.listen)",
            );
            None
        }
    };
    let max_lifetime = v.positive_duration("access.client_tokens.max_lifetime", &raw.max_lifetime);
    if role.is_none() {
        v.problem(
            "access.client_tokens.role",
            format!("unknown role `{}`", raw.role),
        );
    }
    Some(ClientTokensConfig {
        public_key_files,
        public_keys,
        audience: audience?,
        role: role?,
        max_lifetime,
    })
}
