//! Whether the allocator may call a host's `restAddr` (pure).
//!
//! `restAddr` comes from a znode anyone may write. The payload check
//! ([`crate::znode::HostPayload::rest_socket_addr`]) already insists on a
//! unicast `ip:port`; this refuses the allocator's own listener, which would
//! make one `/ice` call recurse. A loop through another allocator is
//! stopped by the hop header ([`HOP_HEADER`]) instead.

use std::net::{IpAddr, SocketAddr};

/// Set on every request the allocator makes to a host; a request that
/// carries it is refused, so an allocator is never called by one.
pub const HOP_HEADER: &str = "x-turn-allocator-hop";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("restAddr is not a unicast ip:port")]
    NotUnicast,
    #[error("restAddr is the allocator's own listener")]
    OwnListener,
}

/// `target` when the allocator may call it. `listener` is the service's
/// bound address; when it is a wildcard (`0.0.0.0`, `[::]`), any local
/// address on its port is the service itself, and `is_local` says which
/// addresses are this machine's.
pub fn check(
    target: SocketAddr,
    listener: SocketAddr,
    is_local: impl FnOnce(IpAddr) -> bool,
) -> Result<SocketAddr, TargetError> {
    let ip = target.ip().to_canonical();
    if ip.is_unspecified()
        || ip.is_multicast()
        || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
        || target.port() == 0
    {
        return Err(TargetError::NotUnicast);
    }
    if target.port() == listener.port() {
        let listener_ip = listener.ip().to_canonical();
        let own = if listener_ip.is_unspecified() {
            is_local(ip)
        } else {
            listener_ip == ip
        };
        if own {
            return Err(TargetError::OwnListener);
        }
    }
    Ok(SocketAddr::new(ip, target.port()))
}

/// Whether `ip` is assigned to this machine: only a local address can be
/// bound. (All of 127.0.0.0/8 is local on Linux.)
pub fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn own_listener_is_refused_exactly_or_through_a_wildcard() {
        let table: &[(&str, &str, bool, Result<&str, TargetError>)] = &[
            // A specific listener matches only itself.
            (
                "127.0.0.1:8087",
                "127.0.0.1:8087",
                false,
                Err(TargetError::OwnListener),
            ),
            (
                "[::ffff:127.0.0.1]:8087",
                "127.0.0.1:8087",
                false,
                Err(TargetError::OwnListener),
            ),
            (
                "127.0.0.2:8087",
                "127.0.0.1:8087",
                true,
                Ok("127.0.0.2:8087"),
            ),
            (
                "127.0.0.1:8086",
                "127.0.0.1:8087",
                true,
                Ok("127.0.0.1:8086"),
            ),
            // A wildcard listener matches any local address on its port.
            (
                "192.0.2.7:8087",
                "0.0.0.0:8087",
                true,
                Err(TargetError::OwnListener),
            ),
            (
                "[2001:db8::7]:8087",
                "[::]:8087",
                true,
                Err(TargetError::OwnListener),
            ),
            (
                "127.0.0.1:8087",
                "[::]:8087",
                true,
                Err(TargetError::OwnListener),
            ),
            (
                "192.0.2.7:8087",
                "0.0.0.0:8087",
                false,
                Ok("192.0.2.7:8087"),
            ),
            ("192.0.2.7:8086", "0.0.0.0:8087", true, Ok("192.0.2.7:8086")),
            // Never a wildcard, multicast, broadcast or port 0 target.
            (
                "0.0.0.0:8086",
                "127.0.0.1:8087",
                false,
                Err(TargetError::NotUnicast),
            ),
            (
                "[::]:8086",
                "127.0.0.1:8087",
                false,
                Err(TargetError::NotUnicast),
            ),
            (
                "224.0.0.1:8086",
                "127.0.0.1:8087",
                false,
                Err(TargetError::NotUnicast),
            ),
            (
                "255.255.255.255:8086",
                "127.0.0.1:8087",
                false,
                Err(TargetError::NotUnicast),
            ),
            (
                "192.0.2.7:0",
                "127.0.0.1:8087",
                false,
                Err(TargetError::NotUnicast),
            ),
        ];
        for (target, listener, local, expected) in table {
            let is_local = |_: IpAddr| *local;
            assert_eq!(
                check(addr(target), addr(listener), is_local),
                expected.map(addr),
                "{target} against {listener}"
            );
        }
    }

    #[test]
    fn loopback_is_local_and_a_documentation_address_is_not() {
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(is_local_address("127.0.0.9".parse().unwrap()));
        assert!(!is_local_address("192.0.2.77".parse().unwrap()));
    }
}
