//! Who may call which endpoint: the allow list, roles and bearer tokens.
//!
//! Pure: parsing and matching do no I/O (token files are read by config
//! validation), so the whole policy is tested without sockets. The HTTP
//! middleware in `api::guard` applies it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use subtle::ConstantTimeEq;

pub use crate::forwarded::Client;
use crate::secret::Secret;

/// What an endpoint requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    Credential,
    Ice,
    Metrics,
    Status,
    Rotate,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::Credential,
        Permission::Ice,
        Permission::Metrics,
        Permission::Status,
        Permission::Rotate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::Credential => "credential",
            Permission::Ice => "ice",
            Permission::Metrics => "metrics",
            Permission::Status => "status",
            Permission::Rotate => "rotate",
        }
    }

    pub fn parse(text: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub permissions: BTreeSet<Permission>,
}

impl Role {
    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }
}

/// The built-in roles: `admin` (everything) and `user` (credential, ice).
pub fn builtin_roles() -> Vec<Role> {
    vec![
        Role {
            name: "admin".into(),
            permissions: Permission::ALL.into_iter().collect(),
        },
        Role {
            name: "user".into(),
            permissions: [Permission::Credential, Permission::Ice]
                .into_iter()
                .collect(),
        },
    ]
}

/// One allow-list address form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrPattern {
    Single(IpAddr),
    /// `a.b.c.x-y`: the last octet from `x` to `y`.
    LastOctetRange {
        prefix: [u8; 3],
        low: u8,
        high: u8,
    },
    /// CIDR or address/netmask.
    Network(IpNet),
}

impl fmt::Display for AddrPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrPattern::Single(ip) => write!(f, "{ip}"),
            AddrPattern::LastOctetRange {
                prefix: [a, b, c],
                low,
                high,
            } => write!(f, "{a}.{b}.{c}.{low}-{high}"),
            AddrPattern::Network(net) => write!(f, "{net}"),
        }
    }
}

/// Why an allow-list or trusted-proxy entry is not an address pattern;
/// the message names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidAddrPattern(String);

impl InvalidAddrPattern {
    fn new(message: String) -> Self {
        InvalidAddrPattern(message)
    }
}

impl AddrPattern {
    /// Parses `192.168.1.1`, `192.168.2.1-255`, `192.168.3.0/24`,
    /// `192.168.4.0/255.255.255.0`, `2001:db8::1`, `2001:db8::/32`.
    pub fn parse(text: &str) -> Result<AddrPattern, InvalidAddrPattern> {
        let text = text.trim();
        if let Some((address, mask)) = text.split_once('/') {
            let address: IpAddr = address.parse().map_err(|_| {
                InvalidAddrPattern::new(format!("`{text}`: `{address}` is not an IP address"))
            })?;
            let prefix = if mask.contains('.') {
                let mask: Ipv4Addr = mask.parse().map_err(|_| {
                    InvalidAddrPattern::new(format!("`{text}`: `{mask}` is not a netmask"))
                })?;
                if !address.is_ipv4() {
                    return Err(InvalidAddrPattern::new(format!(
                        "`{text}`: a dotted netmask needs an IPv4 address"
                    )));
                }
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(InvalidAddrPattern::new(format!(
                        "`{text}`: netmask `{mask}` is not contiguous"
                    )));
                }
                bits.leading_ones() as u8
            } else {
                mask.parse::<u8>().map_err(|_| {
                    InvalidAddrPattern::new(format!("`{text}`: `{mask}` is not a prefix length"))
                })?
            };
            let network = IpNet::new(address, prefix).map_err(|_| {
                InvalidAddrPattern::new(format!(
                    "`{text}`: prefix length {prefix} is too long for this address family"
                ))
            })?;
            return Ok(AddrPattern::Network(network.trunc()));
        }
        if let Some((start, high)) = text.split_once('-') {
            let start: Ipv4Addr = start.parse().map_err(|_| {
                InvalidAddrPattern::new(format!("`{text}`: `{start}` is not an IPv4 address"))
            })?;
            let high: u8 = high.parse().map_err(|_| {
                InvalidAddrPattern::new(format!("`{text}`: `{high}` is not a last octet (0-255)"))
            })?;
            let [a, b, c, low] = start.octets();
            if high < low {
                return Err(InvalidAddrPattern::new(format!(
                    "`{text}`: range end {high} is below its start {low}"
                )));
            }
            return Ok(AddrPattern::LastOctetRange {
                prefix: [a, b, c],
                low,
                high,
            });
        }
        text.parse().map(AddrPattern::Single).map_err(|_| {
            InvalidAddrPattern::new(format!(
                "`{text}` is not an IP address, a.b.c.x-y range, CIDR or address/netmask"
            ))
        })
    }

    pub fn matches(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self {
            AddrPattern::Single(single) => single.to_canonical() == ip,
            AddrPattern::LastOctetRange { prefix, low, high } => match ip {
                IpAddr::V4(v4) => {
                    let [a, b, c, d] = v4.octets();
                    [a, b, c] == *prefix && (*low..=*high).contains(&d)
                }
                IpAddr::V6(_) => false,
            },
            AddrPattern::Network(net) => net.contains(&ip),
        }
    }
}

/// The whole policy, built by config validation.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessPolicy {
    /// In file order: the first matching entry decides.
    pub allow: Vec<(AddrPattern, usize)>,
    pub roles: Vec<Role>,
    pub tokens: Vec<(Secret, usize)>,
    pub trusted_proxies: Vec<AddrPattern>,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Not in the allow list and no valid token: 401.
    Unknown,
    /// Known, but the role lacks the permission: 403.
    Forbidden,
}

impl AccessPolicy {
    /// The role of a caller: a valid bearer token wins, else the first
    /// allow-list entry that matches the client address.
    pub fn role(&self, client: IpAddr, bearer: Option<&str>) -> Option<&Role> {
        self.role_of(Some(client), bearer)
    }

    /// [`AccessPolicy::role`] for a caller whose address may be unknown
    /// (`None`: a trusted proxy named nobody); then only a token gives one.
    fn role_of(&self, client: Option<IpAddr>, bearer: Option<&str>) -> Option<&Role> {
        if let Some(presented) = bearer {
            // Compare against every token in constant time per token, with
            // no early exit, so timing says nothing about which matched.
            let mut found = None;
            for (token, role) in &self.tokens {
                let equal: bool = token.expose().as_bytes().ct_eq(presented.as_bytes()).into();
                if equal && found.is_none() {
                    found = Some(*role);
                }
            }
            return found.map(|index| &self.roles[index]);
        }
        let client = client?;
        self.allow
            .iter()
            .find(|(pattern, _)| pattern.matches(client))
            .map(|(_, role)| &self.roles[*role])
    }

    pub fn decide(&self, client: IpAddr, bearer: Option<&str>, permission: Permission) -> Decision {
        Self::decision(self.role(client, bearer), permission)
    }

    /// [`AccessPolicy::decide`] for a request's [`Client`]: one a trusted
    /// proxy did not name gets no role from any address.
    pub fn decide_client(
        &self,
        client: Client,
        bearer: Option<&str>,
        permission: Permission,
    ) -> Decision {
        Self::decision(
            self.role_of(client.allow_list_address(), bearer),
            permission,
        )
    }

    fn decision(role: Option<&Role>, permission: Permission) -> Decision {
        match role {
            None => Decision::Unknown,
            Some(role) if role.allows(permission) => Decision::Allowed,
            Some(_) => Decision::Forbidden,
        }
    }

    /// The client behind trusted proxies: every `X-Forwarded-For` line of
    /// the request as one list, walked from the right past trusted proxies
    /// (see [`crate::forwarded`]). Untrusted peers' headers are ignored.
    pub fn client<S: AsRef<str>>(&self, peer: IpAddr, forwarded_for: &[S]) -> Client {
        crate::forwarded::client(peer, forwarded_for, |ip| self.is_trusted_proxy(ip))
    }

    /// [`AccessPolicy::client`]'s address: the proxy's when it named nobody.
    pub fn client_address<S: AsRef<str>>(&self, peer: IpAddr, forwarded_for: &[S]) -> IpAddr {
        self.client(peer, forwarded_for).address()
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|proxy| proxy.matches(ip))
    }
}

/// What the per-client rate limit counts by: an IPv4 address as it is, an
/// IPv6 address by its first `ipv6_prefix` bits (one host usually holds a
/// whole /64, so a /128 key would give it billions of budgets).
pub fn rate_limit_key(client: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn accepted_forms() {
        let table = [
            ("192.168.1.1", "192.168.1.1", "192.168.1.2"),
            ("192.168.2.1-255", "192.168.2.200", "192.168.2.0"),
            ("192.168.3.0/24", "192.168.3.77", "192.168.4.1"),
            ("192.168.4.0/255.255.255.0", "192.168.4.9", "192.168.5.9"),
            ("10.1.2.3/8", "10.200.0.1", "11.0.0.1"),
            ("2001:db8::1", "2001:db8::1", "2001:db8::2"),
            ("2001:db8::/32", "2001:db8:ffff::1", "2001:db9::1"),
            ("127.0.0.1", "::ffff:127.0.0.1", "127.0.0.2"),
        ];
        for (pattern, inside, outside) in table {
            let parsed = AddrPattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            assert!(
                parsed.matches(ip(inside)),
                "{pattern} should match {inside}"
            );
            assert!(
                !parsed.matches(ip(outside)),
                "{pattern} should not match {outside}"
            );
        }
    }

    #[test]
    fn rejected_forms_name_the_entry() {
        for bad in [
            "192.168.2.300",
            "10.0.0.0/33",
            "1.2.3.4-2",
            "1.2.3.4/255.0.255.0",
            "1.2.3.4-256",
            "2001:db8::/129",
            "2001:db8::/255.255.0.0",
            "example.org",
            "",
            "1.2.3/24",
        ] {
            let error = AddrPattern::parse(bad).unwrap_err();
            assert!(
                error.to_string().contains(&format!("`{bad}`")),
                "{bad}: {error}"
            );
        }
    }

    fn policy() -> AccessPolicy {
        let roles = builtin_roles();
        AccessPolicy {
            allow: vec![
                (AddrPattern::parse("127.0.0.1").unwrap(), 0),
                (AddrPattern::parse("10.0.0.0/8").unwrap(), 1),
            ],
            roles,
            tokens: vec![(Secret::new("tok-admin"), 0), (Secret::new("tok-user"), 1)],
            trusted_proxies: vec![AddrPattern::parse("10.9.9.9").unwrap()],
        }
    }

    #[test]
    fn decisions() {
        let policy = policy();
        assert_eq!(
            policy.decide(ip("127.0.0.1"), None, Permission::Rotate),
            Decision::Allowed
        );
        assert_eq!(
            policy.decide(ip("10.1.1.1"), None, Permission::Credential),
            Decision::Allowed
        );
        assert_eq!(
            policy.decide(ip("10.1.1.1"), None, Permission::Rotate),
            Decision::Forbidden
        );
        assert_eq!(
            policy.decide(ip("192.0.2.1"), None, Permission::Credential),
            Decision::Unknown
        );
        assert_eq!(
            policy.decide(ip("192.0.2.1"), Some("tok-user"), Permission::Ice),
            Decision::Allowed
        );
        assert_eq!(
            policy.decide(ip("192.0.2.1"), Some("tok-user"), Permission::Metrics),
            Decision::Forbidden
        );
        assert_eq!(
            policy.decide(ip("127.0.0.1"), Some("wrong"), Permission::Credential),
            Decision::Unknown
        );
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let policy = policy();
        assert_eq!(
            policy.client_address(ip("192.0.2.1"), &["127.0.0.1"]),
            ip("192.0.2.1")
        );
        assert_eq!(
            policy.client_address(ip("10.9.9.9"), &["203.0.113.5"]),
            ip("203.0.113.5")
        );
        assert_eq!(
            policy.client_address(ip("10.9.9.9"), &["127.0.0.1, 203.0.113.5, 10.9.9.9"]),
            ip("203.0.113.5")
        );
        // The HAProxy case: the proxy's own line after the client's.
        assert_eq!(
            policy.client_address(ip("10.9.9.9"), &["127.0.0.1", "203.0.113.5"]),
            ip("203.0.113.5")
        );
        assert_eq!(
            policy.client_address::<&str>(ip("10.9.9.9"), &[]),
            ip("10.9.9.9")
        );
        assert_eq!(
            policy.client_address(ip("10.9.9.9"), &["garbage"]),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn a_proxy_that_names_nobody_gives_no_role() {
        let mut policy = policy();
        // The proxy is on this host: loopback is admin, and trusted.
        policy.trusted_proxies = vec![AddrPattern::parse("127.0.0.1").unwrap()];
        for lines in [&[][..], &["127.0.0.1"][..], &["unknown"][..], &["::1"][..]] {
            let client = policy.client(ip("127.0.0.1"), lines);
            assert_eq!(
                policy.decide_client(client, None, Permission::Credential),
                Decision::Unknown,
                "{lines:?}"
            );
            // A token still works.
            assert_eq!(
                policy.decide_client(client, Some("tok-user"), Permission::Credential),
                Decision::Allowed
            );
        }
        let named = policy.client(ip("127.0.0.1"), &["10.1.1.1"]);
        assert_eq!(
            policy.decide_client(named, None, Permission::Credential),
            Decision::Allowed
        );
    }

    #[test]
    fn rate_limit_keys() {
        let table = [
            ("192.0.2.1", 64, "192.0.2.1"),
            ("::ffff:192.0.2.1", 64, "192.0.2.1"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, "2001:db8:1:2::"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 48, "2001:db8:1::"),
            (
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
                128,
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
            ),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 0, "::"),
        ];
        for (client, prefix, key) in table {
            assert_eq!(
                rate_limit_key(ip(client), prefix),
                ip(key),
                "{client}/{prefix}"
            );
        }
    }

    mod property {
        use super::*;
        use ipnet::Ipv4Net;
        use proptest::prelude::*;

        fn any_v4() -> impl Strategy<Value = Ipv4Addr> {
            any::<u32>().prop_map(Ipv4Addr::from)
        }

        proptest! {
            /// CIDR and netmask forms agree with ipnet's own containment.
            #[test]
            fn networks_agree_with_ipnet(base in any_v4(), prefix in 0u8..=32, probe in any_v4()) {
                let reference = Ipv4Net::new(base, prefix).unwrap().trunc();
                let cidr = AddrPattern::parse(&format!("{base}/{prefix}")).unwrap();
                let mask = Ipv4Addr::from(if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) });
                let netmask = AddrPattern::parse(&format!("{base}/{mask}")).unwrap();
                prop_assert_eq!(cidr.matches(IpAddr::V4(probe)), reference.contains(&probe));
                prop_assert_eq!(netmask.matches(IpAddr::V4(probe)), reference.contains(&probe));
                prop_assert!(cidr.matches(IpAddr::V4(reference.network())));
            }

            /// A last-octet range is the union of the single addresses in it.
            #[test]
            fn ranges_agree_with_singles(base in any_v4(), low in 0u8..=255, span in 0u8..=255, probe_last in 0u8..=255) {
                let high = low.saturating_add(span);
                let [a, b, c, _] = base.octets();
                let range = AddrPattern::parse(&format!("{a}.{b}.{c}.{low}-{high}")).unwrap();
                let probe = Ipv4Addr::new(a, b, c, probe_last);
                let expected = (low..=high).any(|d| Ipv4Net::new(Ipv4Addr::new(a, b, c, d), 32).unwrap().contains(&probe));
                prop_assert_eq!(range.matches(IpAddr::V4(probe)), expected);
                prop_assert!(!range.matches(IpAddr::V4(Ipv4Addr::new(a ^ 1, b, c, low))));
            }
        }
    }
}
