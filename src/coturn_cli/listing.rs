//! Parsers for what coturn 4.6.1's CLI prints: `ps`/`psd` session listings
//! and `pc` configuration (pure; unit-tested on captured real output).
//!
//! Both are strict about the ones the agent relies on: a record without its
//! id, transports or usage, or a listing without its `Total sessions` line,
//! is an error, never a silently smaller number.
//!
//! A session record holds text a client chose: coturn prints a client's
//! STUN ORIGIN as it came, and a line break in it starts a new line of the
//! listing (measured on 4.6.1, `testdata/ps_forged_origin.out`). So a
//! client can write lines that look like coturn's own, a whole record
//! included, and make another session's id look like one of its user's. A
//! listing is therefore only trusted when it is exactly what coturn prints:
//! inside a record only the lines 4.6.1 prints, each once (`relay addr`
//! once per address family) and in coturn's order; records numbered 1, 2,
//! 3, ... without a gap; no session id twice; no more records than the
//! total. Anything else is an error for the whole listing (the agent falls
//! back and ends no session from it), since a forged line cannot be told
//! from a real one and a forged record moves every line after it.

use std::net::SocketAddr;

use super::command::SessionId;

/// The socket type names coturn prints (`socket_type_name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Dtls,
    /// A TCP connection not yet known to be TLS (`TCP/TLS`).
    TcpOrTls,
    Sctp,
    TlsSctp,
    Unknown,
}

impl Transport {
    fn parse(name: &str) -> Transport {
        match name {
            "UDP" => Transport::Udp,
            "TCP" => Transport::Tcp,
            "TLS" => Transport::Tls,
            "DTLS" => Transport::Dtls,
            "TCP/TLS" => Transport::TcpOrTls,
            "SCTP" => Transport::Sctp,
            "TLS/SCTP" => Transport::TlsSctp,
            _ => Transport::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Dtls => "dtls",
            Transport::TcpOrTls => "tcp",
            Transport::Sctp => "sctp",
            Transport::TlsSctp => "tls",
            Transport::Unknown => "unknown",
        }
    }
}

/// Cumulative counters of one session. coturn refreshes them only every
/// 4,096 packets of the session, so they lag behind on busy sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub received_packets: u64,
    pub received_bytes: u64,
    pub sent_packets: u64,
    pub sent_bytes: u64,
}

/// coturn's `rate:` line: an average over the session's whole life, in
/// bytes per second, not a live rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LifetimeRate {
    pub received: u64,
    pub sent: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    /// As coturn holds it: any bytes a client sent as USERNAME. Escape it
    /// before logging (`LogSafe`).
    pub user: String,
    pub realm: Option<String>,
    pub origin: Option<String>,
    /// `None` when coturn says "started: undefined time".
    pub age_secs: Option<u64>,
    /// `None` when coturn says "expired".
    pub expires_in_secs: Option<u64>,
    pub client_transport: Transport,
    pub relay_transport: Transport,
    pub client_addr: Option<SocketAddr>,
    pub server_addr: Option<SocketAddr>,
    /// One per address family the allocation has.
    pub relay_addrs: Vec<SocketAddr>,
    pub tls_method: Option<String>,
    pub max_bytes_per_sec: Option<u64>,
    pub usage: Usage,
    pub lifetime_rate: LifetimeRate,
    pub peers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionListing {
    pub sessions: Vec<Session>,
    /// coturn's own count; right even when the listing was cut short.
    pub total: u64,
    /// `ps` printed `...`: more sessions than `cli-max-output-sessions`.
    pub truncated: bool,
}

impl SessionListing {
    /// Every session coturn counted is in `sessions`.
    pub fn is_complete(&self) -> bool {
        !self.truncated && self.sessions.len() as u64 == self.total
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    #[error("line {line}: {reason}")]
    BadLine { line: usize, reason: &'static str },
    #[error("session {id} has no {field} line")]
    MissingField { id: SessionId, field: &'static str },
    #[error("no `Total sessions` line")]
    NoTotal,
    #[error("no `{0}` line")]
    MissingSetting(&'static str),
}

#[derive(Default)]
struct Draft {
    id: Option<SessionId>,
    user: String,
    realm: Option<String>,
    origin: Option<String>,
    age_secs: Option<u64>,
    expires_in_secs: Option<u64>,
    transports: Option<(Transport, Transport)>,
    client_addr: Option<SocketAddr>,
    server_addr: Option<SocketAddr>,
    relay_addrs: Vec<SocketAddr>,
    tls_method: Option<String>,
    max_bytes_per_sec: Option<u64>,
    usage: Option<Usage>,
    lifetime_rate: LifetimeRate,
    peers: Vec<SocketAddr>,
    in_peers: bool,
    /// The [`LineKind`] rank of the last line, to refuse a repeated or
    /// out-of-order line.
    last_rank: Option<u8>,
}

/// The lines coturn 4.6.1 prints inside a session record, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Realm,
    Origin,
    Started,
    Expiry,
    Protocols,
    Addresses,
    /// One per address family: the only line that may come twice in a row.
    RelayAddress,
    Fingerprints,
    Mobile,
    TlsMethod,
    TlsCipher,
    MaxThroughput,
    Usage,
    Rate,
    Peers,
}

impl LineKind {
    fn of(line: &str) -> Option<LineKind> {
        const PREFIXES: [(&str, LineKind); 15] = [
            ("realm: ", LineKind::Realm),
            ("origin: ", LineKind::Origin),
            ("started", LineKind::Started),
            ("expir", LineKind::Expiry),
            ("client protocol ", LineKind::Protocols),
            ("client addr ", LineKind::Addresses),
            ("relay addr ", LineKind::RelayAddress),
            ("fingerprints enforced: ", LineKind::Fingerprints),
            ("mobile: ", LineKind::Mobile),
            ("TLS method: ", LineKind::TlsMethod),
            ("TLS cipher: ", LineKind::TlsCipher),
            ("Max throughput: ", LineKind::MaxThroughput),
            ("usage: ", LineKind::Usage),
            ("rate: ", LineKind::Rate),
            ("peers:", LineKind::Peers),
        ];
        PREFIXES
            .iter()
            .find(|(prefix, _)| line.starts_with(prefix))
            .map(|(_, kind)| *kind)
    }
}

impl Draft {
    /// Accepts a line of `kind` only after the lines coturn prints before
    /// it, and only once (two `relay addr` lines at most).
    fn accept(&mut self, kind: LineKind) -> Result<(), &'static str> {
        let rank = kind as u8;
        match self.last_rank {
            Some(last) if last > rank => return Err("a session line out of coturn's order"),
            Some(last)
                if last == rank
                    && (kind != LineKind::RelayAddress || self.relay_addrs.len() >= 2) =>
            {
                return Err("a session line repeated")
            }
            _ => {}
        }
        self.last_rank = Some(rank);
        Ok(())
    }

    fn finish(self) -> Result<Session, ListingError> {
        let id = self.id.expect("a draft starts with its header");
        let (client_transport, relay_transport) =
            self.transports.ok_or(ListingError::MissingField {
                id,
                field: "client protocol",
            })?;
        let usage = self
            .usage
            .ok_or(ListingError::MissingField { id, field: "usage" })?;
        Ok(Session {
            id,
            user: self.user,
            realm: self.realm,
            origin: self.origin,
            age_secs: self.age_secs,
            expires_in_secs: self.expires_in_secs,
            client_transport,
            relay_transport,
            client_addr: self.client_addr,
            server_addr: self.server_addr,
            relay_addrs: self.relay_addrs,
            tls_method: self.tls_method,
            max_bytes_per_sec: self.max_bytes_per_sec,
            usage,
            lifetime_rate: self.lifetime_rate,
            peers: self.peers,
        })
    }
}

/// `    12) id=001000000000000421, user <alice>:`: the record's number, id
/// and user.
fn parse_header(line: &str) -> Option<(u64, SessionId, String)> {
    let (number, rest) = line.trim_start().split_once(") id=")?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (id, rest) = rest.split_once(", user <")?;
    let user = rest.strip_suffix(">:")?;
    Some((number.parse().ok()?, id.parse().ok()?, user.to_owned()))
}

/// `key=NUMBER` pairs separated by `, ` (`rp=3, rb=300, sp=2, sb=228`).
fn numbers<const N: usize>(text: &str, keys: [&str; N]) -> Option<[u64; N]> {
    let mut values = [0; N];
    let mut parts = text.split(", ");
    for (key, value) in keys.iter().zip(values.iter_mut()) {
        let (name, number) = parts.next()?.split_once('=')?;
        if name != *key {
            return None;
        }
        *value = number.parse().ok()?;
    }
    parts.next().is_none().then_some(values)
}

fn parse_secs(text: &str, prefix: &str, suffix: &str) -> Option<u64> {
    text.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Parses the text of a `ps` (or `ps NAME`) answer, or of a `psd` file.
pub fn parse_sessions(text: &str) -> Result<SessionListing, ListingError> {
    let mut sessions = Vec::new();
    let mut draft: Option<Draft> = None;
    let mut total = None;
    let mut truncated = false;
    let mut ids = std::collections::HashSet::new();
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let bad = |reason| ListingError::BadLine {
            line: line_number,
            reason,
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some((number, id, user)) = parse_header(line) {
            if total.is_some() {
                return Err(bad("a session record after the total"));
            }
            // Checked before the record in progress is finished: a forged
            // header usually leaves that one incomplete too, and the header
            // is the clearer reason.
            if number != (sessions.len() + usize::from(draft.is_some())) as u64 + 1 {
                return Err(bad("a session record out of sequence"));
            }
            if !ids.insert(id) {
                return Err(bad("a session id listed twice"));
            }
            if let Some(done) = draft.take() {
                sessions.push(done.finish()?);
            }
            draft = Some(Draft {
                id: Some(id),
                user,
                ..Draft::default()
            });
            continue;
        }
        if truncated && total.is_none() && !trimmed.starts_with("Total sessions") {
            // coturn prints `...` right before the total: a `...` followed
            // by more lines came from a client's text.
            return Err(bad("a line after `...`"));
        }
        if trimmed == "..." {
            truncated = true;
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("Total sessions") {
            // "Total sessions: 8", or "... for realm R: 8" in a realm view.
            let count = rest.rsplit(": ").next().unwrap_or_default();
            let count = count.parse().map_err(|_| bad("bad session count"))?;
            if let Some(done) = draft.take() {
                sessions.push(done.finish()?);
            }
            if total.is_some() || sessions.len() as u64 > count {
                return Err(bad("more session records than the total"));
            }
            total = Some(count);
            continue;
        }
        let Some(current) = draft.as_mut() else {
            // The warning after a truncated listing and anything else
            // outside a record.
            continue;
        };
        if current.in_peers {
            if let Ok(peer) = trimmed.parse() {
                current.peers.push(peer);
                continue;
            }
            current.in_peers = false;
        }
        let kind = LineKind::of(trimmed).ok_or(bad("an unknown line in a session record"))?;
        current.accept(kind).map_err(bad)?;
        if let Some(realm) = trimmed.strip_prefix("realm: ") {
            current.realm = Some(realm.to_owned());
        } else if let Some(origin) = trimmed.strip_prefix("origin: ") {
            current.origin = Some(origin.to_owned());
        } else if trimmed == "started: undefined time" {
            current.age_secs = None;
        } else if trimmed.starts_with("started ") {
            current.age_secs =
                Some(parse_secs(trimmed, "started ", " secs ago").ok_or(bad("bad start time"))?);
        } else if trimmed == "expired" {
            current.expires_in_secs = None;
        } else if trimmed.starts_with("expiring in ") {
            current.expires_in_secs =
                Some(parse_secs(trimmed, "expiring in ", " secs").ok_or(bad("bad expiry"))?);
        } else if let Some(rest) = trimmed.strip_prefix("client protocol ") {
            let (client, relay) = rest
                .split_once(", relay protocol ")
                .ok_or(bad("bad protocol line"))?;
            current.transports = Some((Transport::parse(client), Transport::parse(relay)));
        } else if let Some(rest) = trimmed.strip_prefix("client addr ") {
            let (client, server) = rest
                .split_once(", server addr ")
                .ok_or(bad("bad address line"))?;
            current.client_addr = client.parse().ok();
            current.server_addr = server.parse().ok();
        } else if let Some(relay) = trimmed.strip_prefix("relay addr ") {
            current
                .relay_addrs
                .push(relay.parse().map_err(|_| bad("bad relay address"))?);
        } else if let Some(method) = trimmed.strip_prefix("TLS method: ") {
            current.tls_method = Some(method.to_owned());
        } else if trimmed.starts_with("Max throughput: ") {
            current.max_bytes_per_sec = Some(
                parse_secs(trimmed, "Max throughput: ", " bytes per second")
                    .ok_or(bad("bad max throughput"))?,
            );
        } else if let Some(rest) = trimmed.strip_prefix("usage: ") {
            let [received_packets, received_bytes, sent_packets, sent_bytes] =
                numbers(rest, ["rp", "rb", "sp", "sb"]).ok_or(bad("bad usage line"))?;
            current.usage = Some(Usage {
                received_packets,
                received_bytes,
                sent_packets,
                sent_bytes,
            });
        } else if let Some(rest) = trimmed.strip_prefix("rate: ") {
            let rest = rest
                .strip_suffix(" (bytes per sec)")
                .ok_or(bad("bad rate line"))?;
            let [received, sent, total] =
                numbers(rest, ["r", "s", "total"]).ok_or(bad("bad rate line"))?;
            current.lifetime_rate = LifetimeRate {
                received,
                sent,
                total,
            };
        } else if trimmed == "peers:" {
            current.in_peers = true;
        } else if !matches!(
            kind,
            LineKind::Fingerprints | LineKind::Mobile | LineKind::TlsCipher
        ) {
            return Err(bad("a garbled session line"));
        }
        // Fingerprints, mobile and the TLS cipher carry nothing the agent
        // uses.
    }
    if let Some(done) = draft.take() {
        // A record after the last total line: the listing was cut off.
        done.finish()?;
        return Err(ListingError::NoTotal);
    }
    let total = total.ok_or(ListingError::NoTotal)?;
    Ok(SessionListing {
        sessions,
        total,
        truncated,
    })
}

/// What the agent reads from `pc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCounters {
    pub total_current_allocations: u64,
    pub total_quota: u64,
    pub user_quota: u64,
    pub bps_capacity: u64,
    pub allocated_bps_capacity: u64,
    pub max_bps: u64,
    pub cli_max_output_sessions: u64,
}

/// `  name: value`, `  name: value (*)` or `  name: value (**)`.
fn setting<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let value = line.trim().strip_prefix(name)?.strip_prefix(": ")?;
    Some(
        value
            .strip_suffix(" (**)")
            .or_else(|| value.strip_suffix(" (*)"))
            .unwrap_or(value),
    )
}

/// The value a `cc NAME VALUE` answer reports (`  NAME: VALUE (**)`).
pub fn parse_change(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| setting(line.strip_suffix('\r').unwrap_or(line), name))?
        .parse()
        .ok()
}

/// Parses the text of a `pc` answer.
pub fn parse_configuration(text: &str) -> Result<ServerCounters, ListingError> {
    let find = |name: &'static str| -> Result<u64, ListingError> {
        text.lines()
            .find_map(|line| setting(line, name))
            .ok_or(ListingError::MissingSetting(name))?
            .parse()
            .map_err(|_| ListingError::MissingSetting(name))
    };
    Ok(ServerCounters {
        total_current_allocations: find("total-current-allocs")?,
        total_quota: find("Default total-quota")?,
        user_quota: find("Default user-quota")?,
        bps_capacity: find("Total server bps-capacity")?,
        allocated_bps_capacity: find("Allocated bps-capacity")?,
        max_bps: find("Default max-bps")?,
        cli_max_output_sessions: find("cli-max-output-sessions")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PS_SMALL: &str = include_str!("testdata/ps_small.out");
    const PSD_DUMP: &str = include_str!("testdata/psd_dump.txt");

    #[test]
    fn a_small_listing_with_ipv6_tcp_and_a_long_user_name() {
        let listing = parse_sessions(PS_SMALL).unwrap();
        assert_eq!(listing.total, 8);
        assert!(listing.is_complete());
        let first = &listing.sessions[0];
        assert_eq!(first.id, SessionId(1));
        assert_eq!(first.user, "alice");
        assert_eq!(first.realm.as_deref(), Some("example.org"));
        assert_eq!(first.age_secs, Some(8));
        assert_eq!(first.expires_in_secs, Some(769));
        assert_eq!(first.client_transport, Transport::Udp);
        assert_eq!(first.client_addr, Some("127.0.0.1:60450".parse().unwrap()));
        assert_eq!(first.server_addr, Some("127.0.0.1:13478".parse().unwrap()));
        assert_eq!(first.relay_addrs, vec!["127.0.0.1:40078".parse().unwrap()]);
        assert_eq!(
            first.usage,
            Usage {
                received_packets: 3,
                received_bytes: 300,
                sent_packets: 2,
                sent_bytes: 228
            }
        );
        assert!(first.peers.is_empty());

        let ipv6 = &listing.sessions[1];
        assert_eq!(ipv6.id, SessionId(6));
        assert_eq!(ipv6.client_addr, Some("[::1]:33794".parse().unwrap()));
        assert_eq!(ipv6.relay_addrs, vec!["[::1]:40085".parse().unwrap()]);
        assert_eq!(
            ipv6.peers,
            vec!["[::1]:3481".parse().unwrap(), "[::1]:3480".parse().unwrap()]
        );

        let tcp = &listing.sessions[3];
        assert_eq!(tcp.id, SessionId(1_000_000_000_000_002));
        assert_eq!(
            tcp.user,
            "bob-with-a-rather-long-user-name-for-testing-width-0123456789"
        );
        assert_eq!(tcp.client_transport, Transport::Tcp);
        assert_eq!(tcp.relay_transport, Transport::Udp);
    }

    #[test]
    fn a_listing_cut_at_256_keeps_coturns_total() {
        let transcript = include_str!("testdata/ps_truncated.transcript");
        let listing = parse_sessions(transcript).unwrap();
        assert_eq!(listing.sessions.len(), 256);
        assert_eq!(listing.total, 543);
        assert!(listing.truncated);
        assert!(!listing.is_complete());
    }

    #[test]
    fn a_psd_dump_holds_every_session() {
        let listing = parse_sessions(PSD_DUMP).unwrap();
        assert_eq!(listing.total, 543);
        assert_eq!(listing.sessions.len(), 543);
        assert!(listing.is_complete());
        let ids: std::collections::HashSet<_> = listing.sessions.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), 543, "ids are unique");
    }

    #[test]
    fn tls_sessions_relay_pairs_and_optional_lines() {
        let text = "\r\n    1) id=000000000000000009, user <1767225600:carol>:\r\n\
              realm: example.org\r\n      origin: https://app.example\r\n\
              started: undefined time\r\n      expired\r\n\
              client protocol TLS, relay protocol UDP\r\n\
              client addr [2001:db8::1]:50000, server addr [2001:db8::2]:5349\r\n\
              relay addr 192.0.2.7:49152\r\n      relay addr [2001:db8::2]:49153\r\n\
              fingerprints enforced: OFF\r\n      mobile: OFF\r\n\
              TLS method: TLSv1.3\r\n      TLS cipher: TLS_AES_256_GCM_SHA384\r\n\
              Max throughput: 125000 bytes per second\r\n\
              usage: rp=100000, rb=123456789012, sp=99999, sb=98765432109\r\n\
               rate: r=1000, s=2000, total=3000 (bytes per sec)\r\n\
              \r\n  Total sessions: 1\r\n\r\n";
        let listing = parse_sessions(text).unwrap();
        let tls = &listing.sessions[0];
        assert_eq!(tls.user, "1767225600:carol");
        assert_eq!(tls.origin.as_deref(), Some("https://app.example"));
        assert_eq!((tls.age_secs, tls.expires_in_secs), (None, None));
        assert_eq!(tls.client_transport, Transport::Tls);
        assert_eq!(tls.relay_addrs.len(), 2);
        assert_eq!(tls.tls_method.as_deref(), Some("TLSv1.3"));
        assert_eq!(tls.max_bytes_per_sec, Some(125_000));
        assert_eq!(tls.usage.received_bytes, 123_456_789_012);
        assert_eq!(
            tls.lifetime_rate,
            LifetimeRate {
                received: 1000,
                sent: 2000,
                total: 3000
            }
        );
    }

    #[test]
    fn no_sessions_is_an_empty_complete_listing() {
        let listing = parse_sessions("\r\n  Total sessions: 0\r\n\r\n").unwrap();
        assert!(listing.sessions.is_empty());
        assert!(listing.is_complete());
    }

    #[test]
    fn a_listing_without_its_total_is_an_error_not_zero_sessions() {
        assert_eq!(parse_sessions(""), Err(ListingError::NoTotal));
        assert_eq!(
            parse_sessions("Unknown command\r\n"),
            Err(ListingError::NoTotal)
        );
        // Cut off in the middle of a record.
        let cut = &PS_SMALL[..PS_SMALL.find("    5)").unwrap()];
        assert_eq!(parse_sessions(cut), Err(ListingError::NoTotal));
    }

    #[test]
    fn a_record_without_usage_is_an_error() {
        let text = "    1) id=000000000000000001, user <a>:\r\n\
              client protocol UDP, relay protocol UDP\r\n  Total sessions: 1\r\n";
        assert_eq!(
            parse_sessions(text),
            Err(ListingError::MissingField {
                id: SessionId(1),
                field: "usage"
            })
        );
    }

    #[test]
    fn garbled_numbers_are_errors() {
        let text = PS_SMALL.replacen("rb=300", "rb=3x0", 1);
        assert!(matches!(
            parse_sessions(&text),
            Err(ListingError::BadLine {
                reason: "bad usage line",
                ..
            })
        ));
    }

    #[test]
    fn configuration_counters_from_pc() {
        let counters = parse_configuration(include_str!("testdata/pc.transcript")).unwrap();
        assert_eq!(counters.total_current_allocations, 543);
        assert_eq!(counters.total_quota, 0);
        assert_eq!(counters.cli_max_output_sessions, 256);
        assert_eq!(
            parse_configuration("Unknown command\r\n"),
            Err(ListingError::MissingSetting("total-current-allocs"))
        );
    }

    const FORGED_ORIGIN: &str = include_str!("testdata/ps_forged_origin.out");

    /// A record forged through a client's ORIGIN, as a real turnserver
    /// printed it: refused as a whole, not read as a session of "mallory".
    #[test]
    fn a_record_forged_through_an_origin_is_refused() {
        assert!(FORGED_ORIGIN.contains("user <mallory>"));
        // The capture holds two forgeries: one sent with `\r\n` (a NUL
        // after each `\r`, an unknown line) and one with `\n` (a clean
        // record header, numbered 3 after 5).
        assert_eq!(
            reason(FORGED_ORIGIN),
            Some("an unknown line in a session record")
        );
        let start = FORGED_ORIGIN.find("    2) id=").unwrap();
        let end = FORGED_ORIGIN.find("    3) id=000000000000000001").unwrap();
        let renumbered = (4..=7).fold(
            format!("{}{}", &FORGED_ORIGIN[..start], &FORGED_ORIGIN[end..]),
            |text, n| text.replacen(&format!("    {n}) id="), &format!("    {}) id=", n - 1), 1),
        );
        let renumbered = renumbered
            .replacen(
                "    3) id=000000000000000001",
                "    2) id=000000000000000001",
                1,
            )
            .replacen("Total sessions: 7", "Total sessions: 6", 1);
        assert!(renumbered.contains("user <mallory>"));
        assert_eq!(
            reason(&renumbered),
            Some("a session record out of sequence")
        );
    }

    /// A whole record forged in 114 bytes of ORIGIN, as a real turnserver
    /// printed it: without the numbering it would read as two sessions, one
    /// of them "mallory"'s with an id coturn gave to someone else.
    #[test]
    fn a_whole_record_forged_through_an_origin_is_refused() {
        let text = include_str!("testdata/ps_forged_record.out");
        assert!(text.contains("1) id=000000000000000001, user <mallory>:"));
        assert_eq!(
            reason(text),
            Some("a session record out of sequence"),
            "{:?}",
            parse_sessions(text)
        );
    }

    /// The forged text written inside the listing (ORIGIN's line breaks
    /// become line breaks of `ps`).
    fn forge(origin: &str) -> String {
        PS_SMALL.replacen(
            "      realm: example.org\r\n",
            &format!("      realm: example.org\r\n      origin: {origin}\r\n"),
            1,
        )
    }

    fn reason(text: &str) -> Option<&'static str> {
        match parse_sessions(text) {
            Err(ListingError::BadLine { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    /// A complete record forged in the first session's origin: its own
    /// record stays complete and the forged one takes the real lines after
    /// it. Only the numbering (and the repeated id) give it away.
    #[test]
    fn a_complete_forged_record_with_another_sessions_id_is_refused() {
        let origin = "x\r\nclient protocol UDP, relay protocol UDP\r\n\
                      usage: rp=0, rb=0, sp=0, sb=0\r\n\r\n\
                      2) id=000000000000000006, user <mallory>:";
        assert_eq!(
            reason(&forge(origin)),
            Some("a session record out of sequence")
        );
        // Numbered to fit: then the id is listed twice.
        let text = forge(origin)
            .replacen(
                "    2) id=000000000000000006",
                "    3) id=000000000000000006",
                1,
            )
            .replacen(
                "    3) id=001000000000000001",
                "    4) id=001000000000000001",
                1,
            );
        let renumbered = (4..=8).rev().fold(text, |text, n| {
            text.replacen(&format!("    {n}) id="), &format!("    {}) id=", n + 1), 1)
        });
        assert_eq!(reason(&renumbered), Some("a session id listed twice"));
    }

    #[test]
    fn a_forged_record_after_the_last_one_is_more_than_the_total() {
        let last = PS_SMALL.rfind("rate: r=").unwrap();
        let mut text = PS_SMALL.to_owned();
        text.insert_str(
            last,
            "usage: rp=0, rb=0, sp=0, sb=0\r\n\r\n    9) id=000000000000000777, user <m>:\r\n\
             client protocol UDP, relay protocol UDP\r\n      ",
        );
        // The last record now has two usage lines.
        assert_eq!(reason(&text), Some("a session line repeated"));
        let text = PS_SMALL.replacen(
            "\r\n  Total sessions: 8",
            "    9) id=000000000000000777, user <m>:\r\n\
             client protocol UDP, relay protocol UDP\r\n\
             usage: rp=0, rb=0, sp=0, sb=0\r\n\r\n  Total sessions: 8",
            1,
        );
        assert_eq!(reason(&text), Some("more session records than the total"));
    }

    #[test]
    fn unknown_repeated_and_reordered_lines_are_refused() {
        assert_eq!(reason(&forge("x\r\n...")), Some("a line after `...`"));
        assert_eq!(
            reason(&forge("x\r\nsome future line: 1")),
            Some("an unknown line in a session record")
        );
        // What a `\r` in an origin becomes.
        assert_eq!(
            reason(&forge(
                "x\r\u{0}\r\n    2) id=000000000000000777, user <m>:\r\u{0}"
            )),
            Some("an unknown line in a session record")
        );
        assert_eq!(
            reason(&forge("x\r\nrealm: other.org")),
            Some("a session line out of coturn's order")
        );
        assert_eq!(
            reason(&forge("x\r\norigin: y")),
            Some("a session line repeated")
        );
        assert_eq!(
            reason(&PS_SMALL.replacen(
                "relay addr 127.0.0.1:40078\r\n",
                "relay addr 127.0.0.1:40078\r\n      relay addr [::1]:1\r\n      relay addr [::1]:2\r\n",
                1
            )),
            Some("a session line repeated")
        );
        assert_eq!(
            reason(&forge("x\r\nstarted: whenever")),
            Some("a garbled session line")
        );
        assert_eq!(
            reason(&PS_SMALL.replacen(
                "      mobile: OFF\r\n",
                "      mobile: OFF\r\n      started 1 secs ago\r\n",
                1
            )),
            Some("a session line out of coturn's order")
        );
        // An origin without a line break is just an origin.
        let listing = parse_sessions(&forge("https://app.example:8443")).unwrap();
        assert_eq!(
            listing.sessions[0].origin.as_deref(),
            Some("https://app.example:8443")
        );
    }

    proptest! {
        /// Whatever a client puts in its ORIGIN, the listing is either
        /// refused or read with the same sessions (ids and users) coturn
        /// has: a client's text never adds, removes or relabels a session.
        #[test]
        fn an_origin_never_changes_the_sessions_read(
            lines in proptest::collection::vec(
                prop_oneof![
                    "[a-z:/. ]{0,12}",
                    Just("client protocol UDP, relay protocol UDP".to_owned()),
                    Just("usage: rp=0, rb=0, sp=0, sb=0".to_owned()),
                    Just("rate: r=0, s=0, total=0 (bytes per sec)".to_owned()),
                    Just(String::new()),
                    (1u64..10, 0usize..3, "[a-z]{1,6}").prop_map(|(n, pick, user)| {
                        let id = ["000000000000000001", "000000000000000006", "000000000000000777"][pick];
                        format!("    {n}) id={id}, user <{user}>:")
                    }),
                ],
                1..8,
            ),
            session in 0usize..8,
        ) {
            let original = parse_sessions(PS_SMALL).unwrap();
            let who = |listing: &SessionListing| -> Vec<(SessionId, String)> {
                listing.sessions.iter().map(|s| (s.id, s.user.clone())).collect()
            };
            let origin = lines.join("\r\n");
            let header = PS_SMALL.match_indices(") id=").nth(session).unwrap().0;
            let realm = header + PS_SMALL[header..].find("realm: example.org\r\n").unwrap()
                + "realm: example.org\r\n".len();
            let mut text = PS_SMALL.to_owned();
            text.insert_str(realm, &format!("      origin: {origin}\r\n"));
            if let Ok(listing) = parse_sessions(&text) {
                prop_assert_eq!(who(&listing), who(&original));
                prop_assert_eq!(listing.total, original.total);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "(?s).{0,2000}") {
            let _ = parse_sessions(&text);
            let _ = parse_configuration(&text);
        }

        #[test]
        fn a_real_listing_with_bytes_changed_never_panics(
            position in 0usize..3700,
            replacement in "(?s).{0,8}",
        ) {
            let mut text = PS_SMALL.to_owned();
            let mut position = position.min(text.len());
            while !text.is_char_boundary(position) {
                position -= 1;
            }
            text.insert_str(position, &replacement);
            let _ = parse_sessions(&text);
        }
    }
}
