//! What a host's `/ice` may hand back through the allocator (pure).
//!
//! The host is reached at an address anyone who can write a znode chooses,
//! so its answer is hostile input. It is parsed into the RTCConfiguration
//! fragment the agent writes (`iceServers[{urls, username, credential}]`,
//! `ttl`, `expiresAt`), checked against caps, and re-serialised from these
//! typed fields only: any other field, and any answer of another shape,
//! never reaches the caller.

use serde::{Deserialize, Deserializer, Serialize};

/// Bytes of an `/ice` answer the allocator reads before giving up on the
/// host. The agent's answer is well under 1 KiB.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// ICE servers in one answer.
pub const MAX_SERVERS: usize = 8;
/// URLs of one ICE server.
pub const MAX_URLS: usize = 16;
/// Characters of one URL, username, credential or `expiresAt`.
pub const MAX_STRING_CHARS: usize = 512;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceAnswer {
    pub ice_servers: Vec<IceServer>,
    /// Seconds the credential stays valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// One `RTCIceServer`; `urls` may be a string or a list, as in WebRTC, and
/// is always written back as a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceAnswerError {
    /// Only serde's category and position: its message may quote the body.
    #[error("the answer is not an RTCConfiguration ({0})")]
    Json(String),
    #[error("the answer lists no ICE server")]
    NoServer,
    #[error("the answer lists more than {MAX_SERVERS} ICE servers")]
    TooManyServers,
    #[error("an ICE server has no URL or more than {MAX_URLS}")]
    BadUrlCount,
    #[error("an ICE server URL is not a stun:, stuns:, turn: or turns: URI")]
    BadUrl,
    #[error("a field is longer than {MAX_STRING_CHARS} characters or holds control characters")]
    BadString,
}

impl IceAnswer {
    /// Parses a host's answer; everything but the typed fields is dropped.
    pub fn parse(body: &[u8]) -> Result<IceAnswer, IceAnswerError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(IceAnswerError::Json("over the size cap".into()));
        }
        let answer: IceAnswer = serde_json::from_slice(body).map_err(|error| {
            IceAnswerError::Json(format!(
                "{:?} error at line {} column {}",
                error.classify(),
                error.line(),
                error.column()
            ))
        })?;
        answer.check()?;
        Ok(answer)
    }

    fn check(&self) -> Result<(), IceAnswerError> {
        if self.ice_servers.is_empty() {
            return Err(IceAnswerError::NoServer);
        }
        if self.ice_servers.len() > MAX_SERVERS {
            return Err(IceAnswerError::TooManyServers);
        }
        let string = |value: &str| {
            let ok = value.chars().count() <= MAX_STRING_CHARS
                && !value.chars().any(crate::log_safe::needs_escape);
            ok.then_some(()).ok_or(IceAnswerError::BadString)
        };
        for server in &self.ice_servers {
            if server.urls.is_empty() || server.urls.len() > MAX_URLS {
                return Err(IceAnswerError::BadUrlCount);
            }
            for url in &server.urls {
                string(url)?;
                if !is_ice_uri(url) {
                    return Err(IceAnswerError::BadUrl);
                }
            }
            for value in [&server.username, &server.credential].into_iter().flatten() {
                string(value)?;
            }
        }
        if let Some(expires_at) = &self.expires_at {
            string(expires_at)?;
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// RFC 7064/7065 schemes, no whitespace.
fn is_ice_uri(url: &str) -> bool {
    let scheme_end = url.find(':').unwrap_or(0);
    let scheme = url[..scheme_end].to_ascii_lowercase();
    matches!(scheme.as_str(), "stun" | "stuns" | "turn" | "turns")
        && url.len() > scheme_end + 1
        && !url.chars().any(char::is_whitespace)
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(url) => vec![url],
        OneOrMany::Many(urls) => urls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AGENT_ANSWER: &str = r#"{"iceServers":[{"urls":["turn:192.0.2.10:3478?transport=udp"],"username":"1764400000:bob","credential":"c2VjcmV0"}],"ttl":3600,"expiresAt":"2026-11-29T08:00:00Z"}"#;

    #[test]
    fn the_agents_answer_round_trips_unchanged() {
        let answer = IceAnswer::parse(AGENT_ANSWER.as_bytes()).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&answer.to_json()).unwrap(),
            serde_json::from_str::<serde_json::Value>(AGENT_ANSWER).unwrap()
        );
    }

    #[test]
    fn unknown_fields_are_dropped_at_every_level() {
        let body = r#"{"iceServers":[{"urls":"stun:192.0.2.1","pid":4242,"username":"u","credential":"p"}],
            "zookeeperSession":"0x1234","realm":"secret-realm","ttl":60}"#;
        let answer = IceAnswer::parse(body.as_bytes()).unwrap();
        let text = String::from_utf8(answer.to_json()).unwrap();
        assert_eq!(
            text,
            r#"{"iceServers":[{"urls":["stun:192.0.2.1"],"username":"u","credential":"p"}],"ttl":60}"#
        );
    }

    #[test]
    fn other_shapes_are_refused() {
        let table: &[(&str, IceAnswerError)] = &[
            (r#"{"iceServers":[]}"#, IceAnswerError::NoServer),
            (
                r#"{"iceServers":[{"urls":[]}]}"#,
                IceAnswerError::BadUrlCount,
            ),
            (
                r#"{"iceServers":[{"urls":["http://127.0.0.1:8086/status"]}]}"#,
                IceAnswerError::BadUrl,
            ),
            (
                r#"{"iceServers":[{"urls":["turn:a b"]}]}"#,
                IceAnswerError::BadUrl,
            ),
            (
                r#"{"iceServers":[{"urls":["turn:x"],"username":"a\u001b[2Jb"}]}"#,
                IceAnswerError::BadString,
            ),
        ];
        for (body, expected) in table {
            assert_eq!(
                IceAnswer::parse(body.as_bytes()).unwrap_err(),
                *expected,
                "{body}"
            );
        }
        // The admin /status answer of an agent, as a redirect would fetch it.
        let status = r#"{"version":"0.1.0","ready":true,"registry":{"session":"0x1"},"pid":42}"#;
        assert!(matches!(
            IceAnswer::parse(status.as_bytes()),
            Err(IceAnswerError::Json(_))
        ));
        let many = format!(
            r#"{{"iceServers":[{}]}}"#,
            [r#"{"urls":"stun:x"}"#; MAX_SERVERS + 1].join(",")
        );
        assert_eq!(
            IceAnswer::parse(many.as_bytes()).unwrap_err(),
            IceAnswerError::TooManyServers
        );
        let long = format!(
            r#"{{"iceServers":[{{"urls":"turn:{}"}}]}}"#,
            "x".repeat(600)
        );
        assert_eq!(
            IceAnswer::parse(long.as_bytes()).unwrap_err(),
            IceAnswerError::BadString
        );
    }

    #[test]
    fn errors_do_not_quote_the_body() {
        let error = IceAnswer::parse(br#"{"iceServers":"top secret value"}"#).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_output_reparses(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(answer) = IceAnswer::parse(&body) {
                prop_assert_eq!(IceAnswer::parse(&answer.to_json()).unwrap(), answer);
            }
        }

        #[test]
        fn accepted_answers_hold_only_ice_uris(user in "[ -~]{0,40}", url in "[a-z]{1,6}:[ -~]{0,30}") {
            let body = serde_json::json!({"iceServers":[{"urls":[url.clone()],"username":user}]}).to_string();
            if let Ok(answer) = IceAnswer::parse(body.as_bytes()) {
                prop_assert!(is_ice_uri(&answer.ice_servers[0].urls[0]));
            }
        }
    }
}
