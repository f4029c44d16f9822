//! `/ice?transport=…&policy=…` (pure): which of the configured TURN URIs a
//! caller gets, and whether the configuration tells the browser to relay.
//!
//! A URI's transport is read from its scheme and `transport` parameter:
//! `turns:`/`stuns:` are `tls`; otherwise `?transport=tcp` is `tcp` and
//! anything else (`?transport=udp` or no parameter, STUN's default) is
//! `udp`. `policy=relay` adds `"iceTransportPolicy": "relay"`;
//! `policy=all`, the browser's own default, adds nothing, so an answer
//! without `policy` is the same as before filters existed.

/// Why a filter cannot be applied: the reason of a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceFilterError {
    #[error("unknown transport `{0}`: expected udp, tcp or tls (comma-separated)")]
    UnknownTransport(String),
    #[error("unknown policy `{0}`: expected relay or all")]
    UnknownPolicy(String),
    #[error("no configured TURN URI uses the transports asked for ({0})")]
    NothingLeft(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A parsed `/ice` query's filter part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceFilter {
    /// Empty: every URI.
    transports: Vec<Transport>,
    relay_only: bool,
}

impl Transport {
    fn parse(text: &str) -> Option<Transport> {
        match text.trim().to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The transport a TURN or STUN URI uses.
    pub fn of_uri(uri: &str) -> Transport {
        let (scheme, rest) = uri.split_once(':').unwrap_or(("", uri));
        if scheme.eq_ignore_ascii_case("turns") || scheme.eq_ignore_ascii_case("stuns") {
            return Transport::Tls;
        }
        let transport = rest.split_once('?').and_then(|(_, query)| {
            query.split('&').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.eq_ignore_ascii_case("transport").then_some(value)
            })
        });
        match transport {
            Some(value) if value.eq_ignore_ascii_case("tcp") => Transport::Tcp,
            _ => Transport::Udp,
        }
    }
}

impl IceFilter {
    /// From the raw `transport` and `policy` query values.
    pub fn parse(
        transport: Option<&str>,
        policy: Option<&str>,
    ) -> Result<IceFilter, IceFilterError> {
        let mut transports = Vec::new();
        if let Some(list) = transport {
            for item in list.split(',') {
                let parsed = Transport::parse(item)
                    .ok_or_else(|| IceFilterError::UnknownTransport(bounded(item)))?;
                if !transports.contains(&parsed) {
                    transports.push(parsed);
                }
            }
        }
        let relay_only = match policy.map(|text| text.trim().to_ascii_lowercase()) {
            None => false,
            Some(policy) if policy == "all" => false,
            Some(policy) if policy == "relay" => true,
            Some(_) => return Err(IceFilterError::UnknownPolicy(bounded(policy.unwrap_or("")))),
        };
        Ok(IceFilter {
            transports,
            relay_only,
        })
    }

    /// The URIs this filter keeps, in their configured order; an error
    /// when none is left.
    pub fn apply(&self, uris: &[String]) -> Result<Vec<String>, IceFilterError> {
        let kept: Vec<String> = uris
            .iter()
            .filter(|uri| {
                self.transports.is_empty() || self.transports.contains(&Transport::of_uri(uri))
            })
            .cloned()
            .collect();
        if kept.is_empty() {
            let asked: Vec<&str> = self.transports.iter().map(|t| t.name()).collect();
            return Err(IceFilterError::NothingLeft(asked.join(", ")));
        }
        Ok(kept)
    }

    /// `Some("relay")` for `policy=relay`; `None` leaves the browser's
    /// default (`all`).
    pub fn ice_transport_policy(&self) -> Option<&'static str> {
        self.relay_only.then_some("relay")
    }
}

/// A caller's value in an error reason, kept short.
fn bounded(text: &str) -> String {
    text.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uris() -> Vec<String> {
        [
            "turn:192.0.2.1:3478?transport=udp",
            "turn:192.0.2.1:3478?transport=tcp",
            "turn:192.0.2.1:3478",
            "turns:turn.example:5349?transport=tcp",
            "stun:192.0.2.1:3478",
        ]
        .iter()
        .map(|uri| uri.to_string())
        .collect()
    }

    fn kept(transport: &str) -> Vec<String> {
        IceFilter::parse(Some(transport), None)
            .unwrap()
            .apply(&uris())
            .unwrap()
    }

    #[test]
    fn transports_are_read_from_scheme_and_parameter() {
        assert_eq!(Transport::of_uri("turn:h:3478"), Transport::Udp);
        assert_eq!(
            Transport::of_uri("turn:h:3478?transport=udp"),
            Transport::Udp
        );
        assert_eq!(
            Transport::of_uri("turn:h:3478?transport=TCP"),
            Transport::Tcp
        );
        assert_eq!(Transport::of_uri("TURNS:h:5349"), Transport::Tls);
        assert_eq!(
            Transport::of_uri("turns:h:5349?transport=tcp"),
            Transport::Tls
        );
        assert_eq!(Transport::of_uri("stuns:h"), Transport::Tls);
        assert_eq!(Transport::of_uri("stun:h"), Transport::Udp);
    }

    #[test]
    fn each_transport_keeps_its_uris_in_order() {
        assert_eq!(
            kept("udp"),
            vec![
                "turn:192.0.2.1:3478?transport=udp",
                "turn:192.0.2.1:3478",
                "stun:192.0.2.1:3478"
            ]
        );
        assert_eq!(kept("tcp"), vec!["turn:192.0.2.1:3478?transport=tcp"]);
        assert_eq!(kept("tls"), vec!["turns:turn.example:5349?transport=tcp"]);
        assert_eq!(
            kept("tls,tcp"),
            vec![
                "turn:192.0.2.1:3478?transport=tcp",
                "turns:turn.example:5349?transport=tcp"
            ]
        );
        assert_eq!(kept("udp,tcp,tls,udp"), uris());
        assert_eq!(IceFilter::default().apply(&uris()).unwrap(), uris());
    }

    #[test]
    fn policy_relay_is_said_and_all_is_the_default() {
        let relay = IceFilter::parse(None, Some("relay")).unwrap();
        assert_eq!(relay.ice_transport_policy(), Some("relay"));
        assert_eq!(relay.apply(&uris()).unwrap(), uris());
        let all = IceFilter::parse(None, Some("all")).unwrap();
        assert_eq!(all, IceFilter::default());
        assert_eq!(all.ice_transport_policy(), None);
    }

    #[test]
    fn unknown_values_and_empty_results_are_errors() {
        for bad in ["", "quic", "udp,", "udp;tcp", "dtls"] {
            assert!(
                matches!(
                    IceFilter::parse(Some(bad), None),
                    Err(IceFilterError::UnknownTransport(_))
                ),
                "{bad:?}"
            );
        }
        for bad in ["", "none", "relay,all"] {
            assert!(
                matches!(
                    IceFilter::parse(None, Some(bad)),
                    Err(IceFilterError::UnknownPolicy(_))
                ),
                "{bad:?}"
            );
        }
        let udp_only = vec!["turn:192.0.2.1:3478?transport=udp".to_string()];
        let error = IceFilter::parse(Some("tls"), None)
            .unwrap()
            .apply(&udp_only)
            .unwrap_err();
        assert_eq!(error, IceFilterError::NothingLeft("tls".into()));
        assert!(error.to_string().contains("no configured TURN URI"));
        let long = "x".repeat(10_000);
        let error = IceFilter::parse(Some(&long), None).unwrap_err();
        assert!(error.to_string().len() < 120);
    }

    proptest! {
        /// Whatever the query, the answer is a subset of the configured
        /// URIs in their order, or an error; never a panic.
        #[test]
        fn filters_only_ever_remove(transport in "[a-z,]{0,12}", policy in "[a-z]{0,6}") {
            if let Ok(filter) = IceFilter::parse(Some(&transport), Some(&policy)) {
                if let Ok(kept) = filter.apply(&uris()) {
                    let mut configured = uris().into_iter();
                    for uri in &kept {
                        prop_assert!(configured.any(|c| &c == uri));
                    }
                }
            }
        }
    }
}
