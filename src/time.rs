//! Wall-clock time as the rest of the crate reads it (one place, so pure
//! modules can take instants as parameters and shells call this).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix time now, in seconds and as a duration.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
