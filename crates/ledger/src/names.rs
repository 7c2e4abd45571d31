//! Naming and time helpers shared by the backends: stable storage keys for
//! arbitrary strings (event ids, registry ids) and the integer time encoding.

use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};

/// A fixed-length, URL- and path-safe key for an arbitrary string: the hex sha256.
/// Event ids and resource ids may contain `/`, `%` or spaces; blob names should not.
pub(crate) fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // A separator that cannot occur inside a part keeps ("a","bc") apart from ("ab","c").
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Microseconds since the Unix epoch (how SQLite stores times, and blob metadata too).
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The inverse of [`micros`]; out-of-range values clamp to the epoch.
pub(crate) fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// A `std::time::Duration` as chrono's, saturating at ~292k years.
pub(crate) fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_parts_and_are_stable() {
        assert_ne!(key(&["a", "bc"]), key(&["ab", "c"]));
        assert_eq!(key(&["x"]).len(), 64);
        assert_eq!(key(&["x"]), key(&["x"]));
    }

    #[test]
    fn micros_round_trip() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap() + chrono::Duration::microseconds(7);
        assert_eq!(from_micros(micros(t)), t);
    }
}
