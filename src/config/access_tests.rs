//! `[access]` and client-token checks.

use std::time::Duration;

use super::tests::{env, problems, BASE};
use super::*;
use crate::access::Permission;

#[test]
fn access_entries_are_checked_and_named() {
    let text = format!(
            "{BASE}\n[access]\ndefault_role = \"user\"\nallow = [{{ addr = \"10.0.0.0/33\" }}, {{ addr = \"10.1.0.0/16\", role = \"ops\" }}, {{ addr = \"192.168.2.1-255\" }}]\n\
             [[access.roles]]\nname = \"watcher\"\npermissions = [\"metrics\", \"dance\"]\n"
        );
    let found = problems(&text, &[]);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].starts_with("access.roles[0].permissions: unknown permission `dance`"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("access.allow[0].addr: `10.0.0.0/33`"),
        "{found:?}"
    );
    assert!(
        found[2].starts_with("access.allow[1].role: unknown role `ops`"),
        "{found:?}"
    );
}

#[test]
fn default_access_is_loopback_admin_only() {
    let config = validate(&parse_raw(BASE, env(&[])).unwrap()).unwrap();
    let policy = &config.access.policy;
    use crate::access::Decision;
    for permission in Permission::ALL {
        assert_eq!(
            policy.decide("127.0.0.1".parse().unwrap(), None, permission),
            Decision::Allowed
        );
        assert_eq!(
            policy.decide("::1".parse().unwrap(), None, permission),
            Decision::Allowed
        );
        assert_eq!(
            policy.decide("192.0.2.1".parse().unwrap(), None, permission),
            Decision::Unknown
        );
    }
}

#[test]
fn cors_origins_and_client_tokens_are_validated() {
    let found = problems(
        &format!("{BASE}[api]\ncors_origins = [\"app.example\"]\ncors_max_age = \"soon\"\n"),
        &[],
    );
    assert!(
        found.iter().any(|p| p.starts_with("api.cors_origins:")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.starts_with("api.cors_max_age:")),
        "{found:?}"
    );

    let dir = std::env::temp_dir().join(format!("ta-client-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let public = dir.join("public.pem");
    let (_, public_pem) = crate::client_token::test_keys::key_pair();
    std::fs::write(&public, &public_pem).unwrap();
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let section = |extra: &str| {
        format!(
            "{BASE}[access.client_tokens]\npublic_key_files = [\"{}\"]\n{extra}",
            public.display()
        )
    };
    // api.listen is 0.0.0.0 and nothing is advertised: no default audience.
    let found = problems(&section(""), &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("access.client_tokens.audience:"),
        "{found:?}"
    );
    // A concrete listen address is the default audience.
    let raw = parse_raw(
        &section(""),
        env(&[("TURN_AGENT_API_LISTEN", "192.0.2.7:8086")]),
    )
    .unwrap();
    let tokens = validate(&raw).unwrap().access.client_tokens.unwrap();
    assert_eq!(tokens.audience, "192.0.2.7:8086");
    assert_eq!(tokens.max_lifetime, Duration::from_secs(600));
    assert_eq!(tokens.public_keys, vec![public_pem]);
    let found = problems(
            &format!(
                "{BASE}[access.client_tokens]\npublic_key_files = [\"{}\", \"relative.pem\"]\naudience = \"h:1\"\nrole = \"nobody\"\nmax_lifetime = \"0s\"\n",
                garbage.display()
            ),
            &[],
        );
    for key in [
        "access.client_tokens.public_key_files[0]:",
        "access.client_tokens.public_key_files[1]:",
        "access.client_tokens.role:",
        "access.client_tokens.max_lifetime:",
    ] {
        assert!(found.iter().any(|p| p.starts_with(key)), "{key} {found:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
