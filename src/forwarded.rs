//! Who is the client behind trusted proxies: the `X-Forwarded-For` chain,
//! read from the right.
//!
//! Pure: the header lines go in, an address comes out. Every
//! `X-Forwarded-For` line of a request is one list, in order (HAProxy and
//! others append a line of their own instead of extending the first), and
//! the list is walked from the right: each trusted proxy wrote the entry to
//! its left's right, so the first entry that is not a trusted proxy is the
//! client as the outermost trusted proxy saw it. Everything further left was
//! written by that client and is never looked at.
//!
//! `Forwarded:` (RFC 7239) is ignored on purpose: a trusted proxy must
//! append `X-Forwarded-For`. Reading both would let a client pick the one
//! its proxy does not touch.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// One element of the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Address(IpAddr),
    /// `unknown`, an obfuscated node name, garbage: never a client address.
    Unparsable,
}

/// Parses one list element: `1.2.3.4`, `1.2.3.4:5`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`, with surrounding spaces, tabs or
/// double quotes. `None` for an empty element, which HTTP lists allow and
/// which says nothing.
pub fn parse_hop(text: &str) -> Option<Hop> {
    let text = text.trim_matches([' ', '\t']);
    let text = text
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(text)
        .trim_matches([' ', '\t']);
    if text.is_empty() {
        return None;
    }
    let address = if let Ok(ip) = text.parse::<IpAddr>() {
        Some(ip)
    } else if let Ok(socket) = text.parse::<SocketAddr>() {
        Some(socket.ip())
    } else if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        None
    };
    Some(address.map_or(Hop::Unparsable, |ip| Hop::Address(ip.to_canonical())))
}

/// The non-empty elements of every line, right-most first.
pub fn hops_from_right<'a, S: AsRef<str>>(lines: &'a [S]) -> impl Iterator<Item = Hop> + 'a {
    lines
        .iter()
        .rev()
        .flat_map(|line| line.as_ref().rsplit(','))
        .filter_map(parse_hop)
}

/// Who sent a request, as far as the allow list may know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The peer itself: not a trusted proxy.
    Peer(IpAddr),
    /// The first entry of a trusted proxy's chain that is not a trusted
    /// proxy itself.
    Forwarded(IpAddr),
    /// A trusted proxy (its address here) named no usable client: no
    /// header, trusted proxies only, garbage where the client should be, or
    /// a loopback or unspecified address. Such a request gets no role from
    /// its address: the proxy's own address, often loopback (admin by
    /// default), must not stand in for a client nobody named.
    Unidentified(IpAddr),
}

impl Client {
    /// The address to count the request against (rate limit, logs): the
    /// client's, or the proxy's when it named none.
    pub fn address(self) -> IpAddr {
        match self {
            Client::Peer(ip) | Client::Forwarded(ip) | Client::Unidentified(ip) => ip,
        }
    }

    /// The address the allow list may match; `None` when nobody was named.
    pub fn allow_list_address(self) -> Option<IpAddr> {
        match self {
            Client::Peer(ip) | Client::Forwarded(ip) => Some(ip),
            Client::Unidentified(_) => None,
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Peer(ip) | Client::Forwarded(ip) => write!(f, "{ip}"),
            Client::Unidentified(proxy) => write!(
                f,
                "a client the trusted proxy {proxy} did not name in X-Forwarded-For"
            ),
        }
    }
}

/// The client for a request that came in from `peer` with these
/// `X-Forwarded-For` lines (in the order received).
///
/// A peer that is not a trusted proxy is the client, whatever it sent. From
/// a trusted peer the chain is walked from the right: trusted proxies are
/// skipped, the first other address is the client. An unparsable entry met
/// on the way means a trusted proxy wrote something that is not an address,
/// and a chain of trusted proxies only (or no header) names nobody: both are
/// [`Client::Unidentified`], never an entry further left (which the client
/// chose). A loopback address is taken from a header only when the proxies
/// that passed it on are all on this host (loopback addresses): written by a
/// proxy elsewhere it names that proxy's host, not this one, and must not
/// match this host's loopback entries (admin by default). An unspecified
/// address is never taken. Both are unidentified instead.
pub fn client<S: AsRef<str>>(
    peer: IpAddr,
    lines: &[S],
    is_trusted: impl Fn(IpAddr) -> bool,
) -> Client {
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return Client::Peer(peer);
    }
    // Whether every proxy so far, and so the one that wrote the entry
    // looked at next, is on this host.
    let mut on_this_host = peer.is_loopback();
    for hop in hops_from_right(lines) {
        match hop {
            Hop::Address(ip) if is_trusted(ip) => on_this_host &= ip.is_loopback(),
            Hop::Address(ip) if ip.is_unspecified() => return Client::Unidentified(peer),
            Hop::Address(ip) if ip.is_loopback() && !on_this_host => {
                return Client::Unidentified(peer)
            }
            Hop::Address(ip) => return Client::Forwarded(ip),
            Hop::Unparsable => return Client::Unidentified(peer),
        }
    }
    Client::Unidentified(peer)
}

/// [`client`]'s address: the client's, or the proxy's when it named none.
pub fn client_address<S: AsRef<str>>(
    peer: IpAddr,
    lines: &[S],
    is_trusted: impl Fn(IpAddr) -> bool,
) -> IpAddr {
    client(peer, lines, is_trusted).address()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn element_forms() {
        let table = [
            ("1.2.3.4", Some(Hop::Address(ip("1.2.3.4")))),
            ("  1.2.3.4\t", Some(Hop::Address(ip("1.2.3.4")))),
            ("1.2.3.4:5", Some(Hop::Address(ip("1.2.3.4")))),
            ("\"1.2.3.4\"", Some(Hop::Address(ip("1.2.3.4")))),
            ("2001:db8::1", Some(Hop::Address(ip("2001:db8::1")))),
            ("[2001:db8::1]", Some(Hop::Address(ip("2001:db8::1")))),
            ("[::1]:80", Some(Hop::Address(ip("::1")))),
            ("::ffff:10.0.0.1", Some(Hop::Address(ip("10.0.0.1")))),
            ("", None),
            ("   ", None),
            ("\"\"", None),
            ("unknown", Some(Hop::Unparsable)),
            ("_hidden", Some(Hop::Unparsable)),
            ("1.2.3.4:", Some(Hop::Unparsable)),
            ("1.2.3.4:99999", Some(Hop::Unparsable)),
            ("[1.2.3.4]", Some(Hop::Unparsable)),
            ("[::1", Some(Hop::Unparsable)),
            ("1.2.3.4 5.6.7.8", Some(Hop::Unparsable)),
            ("fe80::1%eth0", Some(Hop::Unparsable)),
        ];
        for (text, expected) in table {
            assert_eq!(parse_hop(text), expected, "{text:?}");
        }
    }

    fn trusted(ip: IpAddr) -> bool {
        ip.to_string().starts_with("10.9.")
    }

    #[test]
    fn every_line_is_one_list_read_from_the_right() {
        let table: &[(&str, &[&str], &str)] = &[
            // An untrusted peer is the client, whatever it claims.
            ("192.0.2.1", &["127.0.0.1"], "192.0.2.1"),
            // The HAProxy case: the client's line first, the proxy's own
            // line after it.
            ("10.9.0.1", &["127.0.0.1", "203.0.113.5"], "203.0.113.5"),
            ("10.9.0.1", &["127.0.0.1, 203.0.113.5"], "203.0.113.5"),
            // Two trusted proxies in a row.
            (
                "10.9.0.1",
                &["127.0.0.1", "203.0.113.5, 10.9.0.2"],
                "203.0.113.5",
            ),
            (
                "10.9.0.1",
                &["127.0.0.1", "203.0.113.5", "10.9.0.2"],
                "203.0.113.5",
            ),
            // Empty elements and odd spacing say nothing.
            (
                "10.9.0.1",
                &["127.0.0.1,,", " , 203.0.113.5 ,"],
                "203.0.113.5",
            ),
            (
                "10.9.0.1",
                &["127.0.0.1", "[2001:db8::7]:443"],
                "2001:db8::7",
            ),
            (
                "10.9.0.1",
                &["127.0.0.1", "203.0.113.5:61000"],
                "203.0.113.5",
            ),
            // No header, or trusted proxies only: the peer (unidentified).
            ("10.9.0.1", &[], "10.9.0.1"),
            ("10.9.0.1", &["10.9.0.3, 10.9.0.2"], "10.9.0.1"),
            // Garbage where it matters: the peer, never the entry left of it.
            ("10.9.0.1", &["127.0.0.1", "unknown"], "10.9.0.1"),
            ("10.9.0.1", &["127.0.0.1, garbage, 10.9.0.2"], "10.9.0.1"),
            // Garbage left of the client: never reached.
            ("10.9.0.1", &["garbage", "203.0.113.5"], "203.0.113.5"),
            // A mapped peer address is the IPv4 one.
            ("::ffff:192.0.2.1", &["127.0.0.1"], "192.0.2.1"),
            (
                "::ffff:10.9.0.1",
                &["127.0.0.1", "203.0.113.5"],
                "203.0.113.5",
            ),
        ];
        for (peer, lines, expected) in table {
            assert_eq!(
                client_address(ip(peer), lines, trusted),
                ip(expected),
                "{peer} {lines:?}"
            );
        }
    }

    #[test]
    fn proxies_that_name_nobody_give_no_address_to_the_allow_list() {
        let table: &[(&str, &[&str], Client)] = &[
            ("192.0.2.1", &["127.0.0.1"], Client::Peer(ip("192.0.2.1"))),
            ("127.0.0.1", &[], Client::Peer(ip("127.0.0.1"))),
            (
                "10.9.0.1",
                &["203.0.113.5"],
                Client::Forwarded(ip("203.0.113.5")),
            ),
            ("10.9.0.1", &[], Client::Unidentified(ip("10.9.0.1"))),
            (
                "10.9.0.1",
                &["10.9.0.2"],
                Client::Unidentified(ip("10.9.0.1")),
            ),
            (
                "10.9.0.1",
                &["unknown"],
                Client::Unidentified(ip("10.9.0.1")),
            ),
            // A loopback address is not taken from a proxy elsewhere, an
            // unspecified one from no proxy.
            (
                "10.9.0.1",
                &["127.0.0.1"],
                Client::Unidentified(ip("10.9.0.1")),
            ),
            (
                "10.9.0.1",
                &["203.0.113.5, 127.0.0.2"],
                Client::Unidentified(ip("10.9.0.1")),
            ),
            (
                "10.9.0.1",
                &["[::1]:80"],
                Client::Unidentified(ip("10.9.0.1")),
            ),
            (
                "10.9.0.1",
                &["::ffff:127.0.0.1"],
                Client::Unidentified(ip("10.9.0.1")),
            ),
            (
                "10.9.0.1",
                &["0.0.0.0"],
                Client::Unidentified(ip("10.9.0.1")),
            ),
            // Left of the client, loopback is never reached.
            (
                "10.9.0.1",
                &["127.0.0.1", "203.0.113.5"],
                Client::Forwarded(ip("203.0.113.5")),
            ),
        ];
        for (peer, lines, expected) in table {
            let found = client(ip(peer), lines, trusted);
            assert_eq!(found, *expected, "{peer} {lines:?}");
            assert_eq!(
                found.allow_list_address().is_none(),
                matches!(expected, Client::Unidentified(_))
            );
        }
        // A proxy on this host (127.0.0.2) passes on a local caller; one
        // elsewhere behind it cannot.
        let local = |ip: IpAddr| trusted(ip) || ip == IpAddr::from([127, 0, 0, 2]);
        let table: &[(&str, &[&str], Client)] = &[
            (
                "127.0.0.2",
                &["127.0.0.1"],
                Client::Forwarded(ip("127.0.0.1")),
            ),
            (
                "127.0.0.2",
                &["127.0.0.9:5100"],
                Client::Forwarded(ip("127.0.0.9")),
            ),
            (
                "127.0.0.2",
                &["127.0.0.1, 10.9.0.1"],
                Client::Unidentified(ip("127.0.0.2")),
            ),
            (
                "127.0.0.2",
                &["0.0.0.0"],
                Client::Unidentified(ip("127.0.0.2")),
            ),
            ("127.0.0.2", &[], Client::Unidentified(ip("127.0.0.2"))),
            (
                "10.9.0.1",
                &["127.0.0.1, 127.0.0.2"],
                Client::Unidentified(ip("10.9.0.1")),
            ),
        ];
        for (peer, lines, expected) in table {
            assert_eq!(
                client(ip(peer), lines, local),
                *expected,
                "{peer} {lines:?}"
            );
        }
    }

    mod property {
        use super::*;
        use proptest::prelude::*;
        use std::net::Ipv4Addr;

        /// Anything a client might put in its own header lines: addresses
        /// (trusted ones included), ports, brackets, garbage, commas.
        fn client_entry() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
                (0u8..4).prop_map(|d| format!("10.9.0.{d}")),
                Just("127.0.0.1".to_string()),
                Just("[::1]:80".to_string()),
                Just("unknown".to_string()),
                Just(String::new()),
                "[ -~]{0,12}",
            ]
        }

        fn untrusted_v4() -> impl Strategy<Value = IpAddr> {
            any::<[u8; 4]>()
                .prop_filter("not a trusted proxy, loopback or unspecified", |o| {
                    o[0] != 10 && o[0] != 127 && *o != [0; 4]
                })
                .prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)))
        }

        /// How a proxy records the address it saw.
        fn spelled(ip: IpAddr, form: u8) -> String {
            match (ip, form % 3) {
                (IpAddr::V4(v4), 1) => format!("{v4}:{}", 1024 + u16::from(form)),
                (IpAddr::V6(v6), 1) => format!("[{v6}]:443"),
                (IpAddr::V6(v6), 2) => format!("[{v6}]"),
                _ => ip.to_string(),
            }
        }

        proptest! {
            /// Whatever the client injects, in however many lines, the
            /// address the first trusted proxy saw is chosen when the
            /// right-most hops are trusted proxies.
            #[test]
            fn no_client_controlled_entry_is_ever_chosen(
                injected in proptest::collection::vec(proptest::collection::vec(client_entry(), 0..4), 0..4),
                client in untrusted_v4(),
                proxies in proptest::collection::vec((0u8..4, any::<bool>(), any::<u8>()), 1..4),
                client_form in any::<u8>(),
                spaces in any::<bool>(),
            ) {
                let separator = if spaces { " ,  " } else { "," };
                let mut lines: Vec<String> = injected.iter().map(|line| line.join(separator)).collect();
                // The first proxy appends the client's address; each next
                // proxy appends the previous proxy's.
                let mut seen = spelled(client, client_form);
                for (last_octet, own_line, form) in &proxies {
                    match lines.last_mut() {
                        Some(line) if !own_line => {
                            line.push_str(separator);
                            line.push_str(&seen);
                        }
                        _ => lines.push(seen.clone()),
                    }
                    seen = spelled(IpAddr::V4(Ipv4Addr::new(10, 9, 0, *last_octet)), *form);
                }
                let peer = IpAddr::V4(Ipv4Addr::new(10, 9, 0, proxies.last().unwrap().0));
                prop_assert_eq!(client_address(peer, &lines, trusted), client);
            }

            /// From a trusted proxy the allow list never sees a loopback,
            /// unspecified or trusted address, whatever the lines say.
            #[test]
            fn a_trusted_proxy_never_passes_on_loopback_or_itself(
                lines in proptest::collection::vec(proptest::collection::vec(client_entry(), 0..4), 0..4),
                last_octet in 0u8..4,
            ) {
                let lines: Vec<String> = lines.iter().map(|line| line.join(",")).collect();
                let peer = IpAddr::V4(Ipv4Addr::new(10, 9, 0, last_octet));
                let found = client(peer, &lines, trusted);
                if let Some(ip) = found.allow_list_address() {
                    prop_assert!(!ip.is_loopback() && !ip.is_unspecified() && !trusted(ip), "{found:?}");
                } else {
                    prop_assert_eq!(found, Client::Unidentified(peer));
                }
            }

            /// The answer is always the peer or an address some trusted
            /// proxy wrote, never one from left of the untrusted client.
            #[test]
            fn untrusted_peers_are_the_client(
                lines in proptest::collection::vec("[ -~]{0,40}", 0..4),
                peer in untrusted_v4(),
            ) {
                prop_assert_eq!(client_address(peer, &lines, trusted), peer);
            }
        }
    }
}
