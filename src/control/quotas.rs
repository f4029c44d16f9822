//! Which quotas to change in the running turnserver (pure).
//!
//! `turnserver.total_quota`, `user_quota`, `max_bps` and `bps_capacity` are
//! passed as flags at start (when not 0) and changed live with `cc` when a
//! SIGHUP changes them: no restart, no drain. A new turnserver is compared
//! with what `pc` reports, but only for settings the agent sets (not 0), so
//! a quota in the operator's `config_file` is left alone until the agent's
//! key changes.

use crate::config::control::Quotas;
use crate::coturn_cli::command::LiveSetting;
use crate::coturn_cli::listing::ServerCounters;

/// One `cc` to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaChange {
    pub setting: LiveSetting,
    /// The agent's key, for the log.
    pub key: &'static str,
    /// What turnserver reports now.
    pub from: u64,
    pub to: u64,
}

/// `(setting, key, desired, applied, observed)` for the four settings.
fn rows(
    desired: &Quotas,
    applied: &Quotas,
    observed: &ServerCounters,
) -> [(LiveSetting, &'static str, u64, u64, u64); 4] {
    [
        (
            LiveSetting::TotalQuota,
            "turnserver.total_quota",
            desired.total_quota,
            applied.total_quota,
            observed.total_quota,
        ),
        (
            LiveSetting::UserQuota,
            "turnserver.user_quota",
            desired.user_quota,
            applied.user_quota,
            observed.user_quota,
        ),
        (
            LiveSetting::MaxBps,
            "turnserver.max_bps",
            desired.max_bps,
            applied.max_bps,
            observed.max_bps,
        ),
        (
            LiveSetting::BpsCapacity,
            "turnserver.bps_capacity",
            desired.bps_capacity,
            applied.bps_capacity,
            observed.bps_capacity,
        ),
    ]
}

/// The `cc` commands that bring turnserver to `desired`.
///
/// `applied` is what the agent last set in this turnserver (`None` for a
/// turnserver not yet compared): a setting the agent's configuration
/// changed since is sent even when it goes back to 0; for a new turnserver
/// only the settings the agent sets (not 0) that `pc` shows otherwise.
pub fn changes(
    desired: &Quotas,
    applied: Option<&Quotas>,
    observed: &ServerCounters,
) -> Vec<QuotaChange> {
    let fresh = applied.is_none();
    let applied = applied.copied().unwrap_or_default();
    rows(desired, &applied, observed)
        .into_iter()
        .filter(|(_, _, want, had, now)| {
            if fresh {
                *want != 0 && want != now
            } else {
                want != had && want != now
            }
        })
        .map(|(setting, key, want, _, now)| QuotaChange {
            setting,
            key,
            from: now,
            to: want,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(total: u64, user: u64, max_bps: u64, capacity: u64) -> ServerCounters {
        ServerCounters {
            total_current_allocations: 0,
            total_quota: total,
            user_quota: user,
            bps_capacity: capacity,
            allocated_bps_capacity: 0,
            max_bps,
            cli_max_output_sessions: 256,
        }
    }

    fn quotas(total: u64, user: u64, max_bps: u64, capacity: u64) -> Quotas {
        Quotas {
            total_quota: total,
            user_quota: user,
            max_bps,
            bps_capacity: capacity,
        }
    }

    #[test]
    fn a_new_turnserver_gets_the_agents_non_zero_settings_only() {
        // Started with the flags: nothing to do.
        let desired = quotas(100, 10, 0, 0);
        assert!(changes(&desired, None, &observed(100, 10, 0, 0)).is_empty());
        // A quota from the operator's config_file (agent key 0) stays.
        assert!(changes(&desired, None, &observed(100, 10, 5000, 0)).is_empty());
        // A SIGHUP between spawn and first poll: the new value is sent.
        let sent = changes(&quotas(200, 10, 0, 0), None, &observed(100, 10, 0, 0));
        assert_eq!(
            sent,
            [QuotaChange {
                setting: LiveSetting::TotalQuota,
                key: "turnserver.total_quota",
                from: 100,
                to: 200
            }]
        );
    }

    #[test]
    fn a_changed_key_is_sent_once_even_back_to_zero() {
        let applied = quotas(100, 10, 1000, 5000);
        let now = observed(100, 10, 1000, 5000);
        assert!(changes(&applied, Some(&applied), &now).is_empty());
        let desired = quotas(0, 20, 1000, 9000);
        let sent: Vec<_> = changes(&desired, Some(&applied), &now)
            .iter()
            .map(|change| (change.key, change.from, change.to))
            .collect();
        assert_eq!(
            sent,
            [
                ("turnserver.total_quota", 100, 0),
                ("turnserver.user_quota", 10, 20),
                ("turnserver.bps_capacity", 5000, 9000)
            ]
        );
        // Already in effect (answered but not yet recorded): nothing sent.
        assert!(changes(&desired, Some(&applied), &observed(0, 20, 1000, 9000)).is_empty());
    }
}
