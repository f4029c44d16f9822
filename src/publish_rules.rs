//! The registry's decisions without I/O: what to do with the node on a
//! pass ([`next_action`]), whether a node found at our path may be taken
//! over ([`ownership`]), and the payload the host publishes
//! ([`free_traffic`], [`HostFacts::payload`]).
//!
//! The registry task is the shell: it gathers the inputs (readiness, the
//! traffic meter, coturn's allocation count, the node's stat) and does
//! what these functions answer with ZooKeeper calls.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::znode::{round_mbps, HostPayload};

/// Free capacity: `capacity - used`, floored at zero.
pub fn free_mbps(capacity_mbps: f64, used_mbps: f64) -> f64 {
    (capacity_mbps - used_mbps).max(0.0)
}

/// Whether a new free value differs enough from the published one to be
/// worth a write: more than `hysteresis_percent` of capacity.
pub fn changed_enough(
    published: f64,
    current: f64,
    capacity_mbps: f64,
    hysteresis_percent: f64,
) -> bool {
    (published - current).abs() > capacity_mbps * hysteresis_percent / 100.0
}

/// When the agent writes its node again: at a publish tick, when free
/// traffic moved past the hysteresis band since the last write, or when
/// `max_silence` passed since the tick of the last write. Silence counts
/// from ticks, not from when a write returned, so a round trip per write
/// cannot stretch it by a whole interval.
///
/// The band is `hysteresis_percent` of capacity, narrowed to
/// `headroom_hysteresis_percent` of the free traffic (published or
/// current, the larger) when that is smaller: a nearly full host writes
/// sooner. With a band of 5 % of capacity alone, a 10 Gbps host at 95 %
/// could fill to the brim without a write until `max_silence`, while every
/// allocator kept sending it sessions (docs/allocator-scale.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishRule {
    pub capacity_mbps: f64,
    pub hysteresis_percent: f64,
    /// 100 or more turns the narrowing off (a change never exceeds the
    /// larger of two non-negative values).
    pub headroom_hysteresis_percent: f64,
    pub max_silence: Duration,
}

impl PublishRule {
    /// `since_written` is the time from the tick of the last write to this
    /// tick.
    pub fn should_write(
        &self,
        published_free: f64,
        current_free: f64,
        since_written: Duration,
    ) -> bool {
        since_written >= self.max_silence
            || (published_free - current_free).abs() > self.band(published_free, current_free)
    }

    /// The change in free traffic (Mbps) that a write must exceed.
    pub fn band(&self, published_free: f64, current_free: f64) -> f64 {
        let of_capacity = self.capacity_mbps * self.hysteresis_percent / 100.0;
        let headroom = published_free.max(current_free).max(0.0);
        of_capacity.min(headroom * self.headroom_hysteresis_percent / 100.0)
    }
}

/// What the host should look like in ZooKeeper on this pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wanted<'a> {
    /// The host can serve: listed with this payload.
    Listed(&'a HostPayload),
    /// The host cannot serve: not listed.
    Withdrawn,
}

/// The node as this session last wrote it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Written<'a> {
    pub payload: &'a HostPayload,
    /// From the publish tick of that write to this pass's tick.
    pub since_written: Duration,
}

/// What the registry does with the node on one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAction {
    /// Not written in this session: create it.
    Create,
    /// Written, and the content moved enough (or `max_silence` passed).
    Update,
    /// Written, but the host cannot serve: delete it.
    Delete,
    /// Nothing worth a write.
    Nothing,
}

/// The one "needs write" rule. Free traffic goes through `rule`'s
/// hysteresis and silence; any other field (region, ISPs, URIs, the
/// allocation count …) is written as soon as it changes; `updatedAt` alone
/// never causes a write.
pub fn next_action(
    wanted: Wanted<'_>,
    written: Option<Written<'_>>,
    rule: &PublishRule,
) -> NodeAction {
    match (wanted, written) {
        (Wanted::Withdrawn, Some(_)) => NodeAction::Delete,
        (Wanted::Withdrawn, None) => NodeAction::Nothing,
        (Wanted::Listed(_), None) => NodeAction::Create,
        (Wanted::Listed(current), Some(written)) => {
            let due = rule.should_write(
                written.payload.free_traffic,
                current.free_traffic,
                written.since_written,
            );
            let other_fields_changed = HostPayload {
                free_traffic: written.payload.free_traffic,
                updated_at: written.payload.updated_at.clone(),
                ..current.clone()
            } != *written.payload;
            if due || other_fields_changed {
                NodeAction::Update
            } else {
                NodeAction::Nothing
            }
        }
    }
}

/// Who holds a node found at our path when we tried to create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// This session: update it in place.
    ThisSession,
    /// An earlier session of this process, or a session whose payload
    /// names our own `restAddr` (this host before a restart): replace it.
    EarlierSessionOfThisHost,
    /// Another live host: two hosts share `zookeeper.node`; never touch it.
    AnotherHost,
}

/// Decides [`Ownership`] from the node's `ephemeral_owner`, the current
/// session, every session this process has held and the node's data.
pub fn ownership(
    owner: i64,
    session: i64,
    own_sessions: &[i64],
    existing_data: &[u8],
    our_rest_addr: &str,
) -> Ownership {
    if owner == session {
        return Ownership::ThisSession;
    }
    let same_host = HostPayload::parse(existing_data)
        .map(|theirs| theirs.rest_addr == our_rest_addr)
        .unwrap_or(false);
    if own_sessions.contains(&owner) || same_host {
        Ownership::EarlierSessionOfThisHost
    } else {
        Ownership::AnotherHost
    }
}

/// Free traffic as published: capacity minus use, rounded to one decimal,
/// and none at all once coturn holds `max_allocations` allocations, so
/// allocators skip the host.
pub fn free_traffic(
    capacity_mbps: f64,
    used_mbps: f64,
    allocations: Option<u64>,
    max_allocations: Option<u64>,
) -> f64 {
    round_mbps(capped_by_allocations(
        free_mbps(capacity_mbps, used_mbps),
        allocations,
        max_allocations,
    ))
}

/// Zero once `allocations` reached `max`; otherwise `free_mbps` unchanged.
/// An unknown count (control channel down) or no cap leaves traffic to
/// decide.
pub fn capped_by_allocations(free_mbps: f64, allocations: Option<u64>, max: Option<u64>) -> f64 {
    match (allocations, max) {
        (Some(allocations), Some(max)) if allocations >= max => 0.0,
        _ => free_mbps,
    }
}

/// Everything the payload says about the host, gathered by the shell.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// `api.listen`.
    pub listen: SocketAddr,
    /// `api.advertise`, which wins over `listen` when set.
    pub advertise: Option<SocketAddr>,
    pub turn_uris: Vec<String>,
    pub realm: String,
    pub capacity_mbps: f64,
    pub region: String,
    pub isp: Vec<String>,
    /// turnserver restarts since the agent started.
    pub restarts: u64,
    /// coturn's allocations, when the control channel knows them.
    pub allocations: Option<u64>,
}

impl HostFacts {
    /// The address allocators hand out: `advertise`, else `listen`.
    pub fn rest_addr(&self) -> String {
        self.advertise.unwrap_or(self.listen).to_string()
    }

    /// The payload with `free_traffic` (from [`free_traffic`]), written at
    /// `now` by agent `version`.
    pub fn payload(&self, free_traffic: f64, now: SystemTime, version: &str) -> HostPayload {
        HostPayload {
            free_traffic,
            rest_addr: self.rest_addr(),
            turn_uris: self.turn_uris.clone(),
            realm: self.realm.clone(),
            capacity_mbps: self.capacity_mbps,
            region: self.region.clone(),
            isp: self.isp.clone(),
            updated_at: humantime::format_rfc3339_seconds(now).to_string(),
            version: version.to_string(),
            restarts: self.restarts,
            allocations: self.allocations,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> PublishRule {
        PublishRule {
            capacity_mbps: 1000.0,
            hysteresis_percent: 5.0,
            headroom_hysteresis_percent: 100.0,
            max_silence: Duration::from_secs(60),
        }
    }

    fn facts() -> HostFacts {
        HostFacts {
            listen: "0.0.0.0:8080".parse().unwrap(),
            advertise: Some("192.0.2.10:8080".parse().unwrap()),
            turn_uris: vec!["turn:192.0.2.10:3478".into()],
            realm: "example.org".into(),
            capacity_mbps: 1000.0,
            region: "eu".into(),
            isp: vec!["isp-a".into()],
            restarts: 0,
            allocations: Some(3),
        }
    }

    fn payload_with(free: f64, edit: impl FnOnce(&mut HostPayload)) -> HostPayload {
        let mut payload = facts().payload(free, SystemTime::UNIX_EPOCH, "1.0.0");
        edit(&mut payload);
        payload
    }

    #[test]
    fn free_and_hysteresis() {
        assert_eq!(free_mbps(1000.0, 250.0), 750.0);
        assert_eq!(free_mbps(100.0, 250.0), 0.0);
        assert!(!changed_enough(500.0, 530.0, 1000.0, 5.0));
        assert!(changed_enough(500.0, 551.0, 1000.0, 5.0));
        assert!(changed_enough(500.0, 500.5, 1000.0, 0.0));
    }

    #[test]
    fn silence_counts_from_the_tick_of_the_last_write() {
        let rule = rule();
        // Six 10 s ticks after the write's tick: due, however long the
        // write itself took.
        assert!(rule.should_write(500.0, 500.0, Duration::from_secs(60)));
        assert!(!rule.should_write(500.0, 500.0, Duration::from_secs(50)));
        assert!(rule.should_write(500.0, 560.0, Duration::from_secs(10)));
    }

    #[test]
    fn next_action_table() {
        let written = payload_with(500.0, |_| {});
        let secs = Duration::from_secs;
        #[rustfmt::skip]
        let table: Vec<(&str, Option<HostPayload>, Option<Duration>, NodeAction)> = vec![
            ("not written yet: create", Some(payload_with(500.0, |_| {})), None, NodeAction::Create),
            ("withdrawn and written: delete", None, Some(secs(0)), NodeAction::Delete),
            ("withdrawn, nothing written: nothing", None, None, NodeAction::Nothing),
            ("same content, within silence", Some(payload_with(500.0, |_| {})), Some(secs(10)), NodeAction::Nothing),
            ("free moved within hysteresis", Some(payload_with(549.0, |_| {})), Some(secs(10)), NodeAction::Nothing),
            ("free moved past hysteresis", Some(payload_with(551.0, |_| {})), Some(secs(10)), NodeAction::Update),
            ("free dropped past hysteresis", Some(payload_with(449.0, |_| {})), Some(secs(10)), NodeAction::Update),
            ("max_silence reached", Some(payload_with(500.0, |_| {})), Some(secs(60)), NodeAction::Update),
            ("just under max_silence", Some(payload_with(500.0, |_| {})), Some(secs(59)), NodeAction::Nothing),
            ("only updatedAt moved", Some(payload_with(500.0, |p| p.updated_at = "2030-01-01T00:00:00Z".into())), Some(secs(10)), NodeAction::Nothing),
            ("region changed", Some(payload_with(500.0, |p| p.region = "us".into())), Some(secs(10)), NodeAction::Update),
            ("isp changed", Some(payload_with(500.0, |p| p.isp.clear())), Some(secs(10)), NodeAction::Update),
            ("turn uris changed", Some(payload_with(500.0, |p| p.turn_uris.push("turns:x:5349".into()))), Some(secs(10)), NodeAction::Update),
            ("allocations changed", Some(payload_with(500.0, |p| p.allocations = Some(4))), Some(secs(10)), NodeAction::Update),
            ("allocations unknown now", Some(payload_with(500.0, |p| p.allocations = None)), Some(secs(10)), NodeAction::Update),
            ("restarts changed", Some(payload_with(500.0, |p| p.restarts = 1)), Some(secs(10)), NodeAction::Update),
            ("capacity changed", Some(payload_with(500.0, |p| p.capacity_mbps = 2000.0)), Some(secs(10)), NodeAction::Update),
            ("restAddr changed", Some(payload_with(500.0, |p| p.rest_addr = "192.0.2.11:8080".into())), Some(secs(10)), NodeAction::Update),
        ];
        for (name, current, since_written, expected) in table {
            let wanted = match &current {
                Some(payload) => Wanted::Listed(payload),
                None => Wanted::Withdrawn,
            };
            let written = since_written.map(|since_written| Written {
                payload: &written,
                since_written,
            });
            assert_eq!(next_action(wanted, written, &rule()), expected, "{name}");
        }
    }

    #[test]
    fn ownership_table() {
        let ours = br#"{"freeTraffic":1.0,"restAddr":"192.0.2.10:8080"}"#;
        let theirs = br#"{"freeTraffic":1.0,"restAddr":"192.0.2.99:8080"}"#;
        #[rustfmt::skip]
        let table = [
            ("this session", 7, &[5, 7][..], &theirs[..], Ownership::ThisSession),
            ("this session, any data", 7, &[][..], &b"not json"[..], Ownership::ThisSession),
            ("an earlier session of this process", 5, &[5, 7][..], &theirs[..], Ownership::EarlierSessionOfThisHost),
            ("another session naming our restAddr", 9, &[7][..], &ours[..], Ownership::EarlierSessionOfThisHost),
            ("another host", 9, &[5, 7][..], &theirs[..], Ownership::AnotherHost),
            ("unreadable data of another session", 9, &[7][..], &b"not json"[..], Ownership::AnotherHost),
            ("empty data of another session", 9, &[7][..], &b""[..], Ownership::AnotherHost),
        ];
        for (name, owner, own_sessions, data, expected) in table {
            assert_eq!(
                ownership(owner, 7, own_sessions, data, "192.0.2.10:8080"),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn free_traffic_table() {
        #[rustfmt::skip]
        let table = [
            ("idle", 1000.0, 0.0, None, None, 1000.0),
            ("rounded to one decimal", 1000.0, 250.04, None, None, 750.0),
            ("over capacity floors at zero", 100.0, 250.0, None, None, 0.0),
            ("below max allocations", 1000.0, 500.0, Some(99), Some(100), 500.0),
            ("at max allocations", 1000.0, 500.0, Some(100), Some(100), 0.0),
            ("over max allocations", 1000.0, 500.0, Some(101), Some(100), 0.0),
            ("count unknown: traffic decides", 1000.0, 500.0, None, Some(100), 500.0),
            ("no cap: traffic decides", 1000.0, 500.0, Some(10_000), None, 500.0),
            ("not a number", 1000.0, f64::NAN, None, None, 0.0),
        ];
        for (name, capacity, used, allocations, max, expected) in table {
            assert_eq!(
                free_traffic(capacity, used, allocations, max),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn payload_names_the_advertised_address_first() {
        let mut facts = facts();
        let payload = facts.payload(12.5, SystemTime::UNIX_EPOCH, "9.9.9");
        assert_eq!(payload.rest_addr, "192.0.2.10:8080");
        assert_eq!(payload.free_traffic, 12.5);
        assert_eq!(payload.updated_at, "1970-01-01T00:00:00Z");
        assert_eq!(payload.version, "9.9.9");
        assert_eq!(payload.allocations, Some(3));
        assert_eq!(payload.region, "eu");
        facts.advertise = None;
        assert_eq!(
            facts
                .payload(0.0, SystemTime::UNIX_EPOCH, "9.9.9")
                .rest_addr,
            "0.0.0.0:8080"
        );
    }

    #[test]
    fn the_band_narrows_with_the_headroom() {
        let rule = |capacity_mbps: f64, headroom_hysteresis_percent: f64| PublishRule {
            capacity_mbps,
            hysteresis_percent: 5.0,
            headroom_hysteresis_percent,
            max_silence: Duration::from_secs(60),
        };
        let ten_seconds = Duration::from_secs(10);
        // (capacity, headroom %, published, current, writes)
        let table: &[(f64, f64, f64, f64, bool)] = &[
            // Plenty of room: 5 % of capacity decides.
            (1000.0, 50.0, 500.0, 540.0, false),
            (1000.0, 50.0, 500.0, 551.0, true),
            // A 10 Gbps host at 95 %: 500 Mbps free. The capacity band
            // alone (500 Mbps) would let it fill to the brim unseen.
            (10_000.0, 100.0, 500.0, 0.0, false),
            (10_000.0, 50.0, 500.0, 0.0, true),
            (10_000.0, 50.0, 500.0, 260.0, false),
            (10_000.0, 50.0, 500.0, 240.0, true),
            // Room coming back to a full host counts the same way.
            (1000.0, 50.0, 0.0, 10.0, true),
            (1000.0, 50.0, 0.0, 0.0, false),
            // 100 % is the capacity band alone.
            (1000.0, 100.0, 40.0, 0.0, false),
            (1000.0, 100.0, 60.0, 0.0, true),
        ];
        for &(capacity, headroom, published, current, writes) in table {
            assert_eq!(
                rule(capacity, headroom).should_write(published, current, ten_seconds),
                writes,
                "capacity {capacity}, headroom {headroom} %, {published} -> {current}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_band_is_never_wider_than_the_capacity_band(
            capacity in 1.0f64..100_000.0,
            hysteresis in 0.0f64..=100.0,
            headroom in 0.0f64..=100.0,
            published in 0.0f64..100_000.0,
            current in 0.0f64..100_000.0,
        ) {
            let rule = PublishRule {
                capacity_mbps: capacity,
                hysteresis_percent: hysteresis,
                headroom_hysteresis_percent: headroom,
                max_silence: Duration::from_secs(60),
            };
            let band = rule.band(published, current);
            proptest::prop_assert!(band >= 0.0);
            proptest::prop_assert!(band <= capacity * hysteresis / 100.0);
            // Whatever the headroom share, what passes the capacity band
            // is written.
            if changed_enough(published, current, capacity, hysteresis) {
                proptest::prop_assert!(rule.should_write(published, current, Duration::ZERO));
            }
        }
    }
}
