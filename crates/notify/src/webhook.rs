//! The generic webhook: a CloudEvent 1.0 in structured JSON mode whose `data` is the
//! [`Notification`], signed with HMAC-SHA256 so the receiver can tell it came from
//! cmkguard and is fresh. The contract (header names, signed string, replay window) is
//! documented in the crate README; [`verify`] is the reference receiver check.
//!
//! Signed string: `"{timestamp}.{body}"`, where `timestamp` is the decimal Unix time in
//! seconds sent in [`TIMESTAMP_HEADER`] and `body` the exact request body bytes.
//! Signature header: `sha256=<lower-case hex of the HMAC>` (a receiver also accepts a
//! comma-separated list, so a sender may sign with an old and a new key while rotating).

use std::time::Duration;

use cloudevents::{EventBuilder, EventBuilderV10};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::channel::SigningKey;
use crate::notification::Notification;

/// Unix time (seconds) of signing.
pub const TIMESTAMP_HEADER: &str = "x-cmkguard-timestamp";
/// `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-cmkguard-signature";
/// The CloudEvent `type` of every notification.
pub const EVENT_TYPE: &str = "com.cmkguard.notification";
/// The CloudEvent `source`.
pub const EVENT_SOURCE: &str = "/cmkguard";
/// Structured-mode content type (CloudEvents JSON format).
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// How far a receiver should accept the timestamp from its own clock (either way).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

/// Building the CloudEvent failed (a bug, not an input problem: every attribute is ours).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the CloudEvent: {0}")]
pub struct BuildError(String);

/// The request body: the CloudEvent as structured JSON. `id` is the CloudEvent id;
/// keep it the same across retries of one notification so receivers can dedupe.
pub fn body(n: &Notification, id: &str) -> Result<Vec<u8>, BuildError> {
    let data = serde_json::to_value(n).map_err(|e| BuildError(e.to_string()))?;
    let mut b = EventBuilderV10::new()
        .id(id)
        .source(EVENT_SOURCE)
        .ty(EVENT_TYPE)
        .time(n.time)
        .extension("severity", n.severity.as_str())
        .extension("dedupekey", n.dedupe_key().as_str())
        .data("application/json", data);
    let resource = n.resource();
    if !resource.is_empty() {
        b = b.subject(resource);
    }
    let event = b.build().map_err(|e| BuildError(e.to_string()))?;
    serde_json::to_vec(&event).map_err(|e| BuildError(e.to_string()))
}

/// A fresh CloudEvent id (UUID v4).
pub fn new_event_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `sha256=<hex>` of HMAC-SHA256(key, "{timestamp}.{body}").
pub fn sign(key: &SigningKey, timestamp: i64, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(mac(key.expose(), &timestamp.to_string(), body).finalize().into_bytes()))
}

fn mac(key: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// Why a signed request was refused. Messages never echo the signature or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {TIMESTAMP_HEADER} header")]
    MissingTimestamp,
    #[error("{TIMESTAMP_HEADER} is not a Unix time in seconds")]
    BadTimestamp,
    #[error("{TIMESTAMP_HEADER} is {0} s away from the receiver's clock (outside the replay window)")]
    OutsideWindow(u64),
    #[error("missing {SIGNATURE_HEADER} header")]
    MissingSignature,
    #[error("{SIGNATURE_HEADER} is not sha256=<64 hex digits>")]
    BadSignatureFormat,
    #[error("signature does not match")]
    Mismatch,
}

/// The receiver's check: the timestamp is within `tolerance` of `now_unix`, and one of
/// the `sha256=` values in the signature header is the HMAC of `"{timestamp}.{body}"`
/// (compared in constant time). Reject the request on any error.
pub fn verify(
    key: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts_text = timestamp.ok_or(VerifyError::MissingTimestamp)?.trim();
    if ts_text.is_empty() || ts_text.len() > 12 || !ts_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    let ts: i64 = ts_text.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_unix.abs_diff(ts);
    if skew > tolerance.as_secs() {
        return Err(VerifyError::OutsideWindow(skew));
    }
    let sig = signature.ok_or(VerifyError::MissingSignature)?;
    let mut candidates = Vec::new();
    for part in sig.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let hex_part = part.strip_prefix("sha256=").ok_or(VerifyError::BadSignatureFormat)?;
        if hex_part.len() != 64 {
            return Err(VerifyError::BadSignatureFormat);
        }
        candidates.push(hex::decode(hex_part).map_err(|_| VerifyError::BadSignatureFormat)?);
    }
    if candidates.is_empty() || candidates.len() > 4 {
        return Err(VerifyError::BadSignatureFormat);
    }
    // The signed string uses the timestamp exactly as sent.
    for c in candidates {
        if mac(key, ts_text, body).verify_slice(&c).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::sample;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::new("0123456789abcdef-test-key").unwrap()
    }

    #[test]
    fn round_trip_and_tamper() {
        let body = br#"{"hello":"world"}"#;
        let ts = 1_790_000_000;
        let sig = sign(&key(), ts, body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        let ok =
            |b: &[u8], t: &str, s: &str, now: i64| verify(key().expose(), Some(t), Some(s), b, now, DEFAULT_TOLERANCE);
        assert_eq!(ok(body, "1790000000", &sig, ts + 10), Ok(()));
        assert_eq!(ok(b"{\"hello\":\"World\"}", "1790000000", &sig, ts), Err(VerifyError::Mismatch));
        assert_eq!(ok(body, "1790000001", &sig, ts), Err(VerifyError::Mismatch));
        assert_eq!(ok(body, "1790000000", &sig, ts + 301), Err(VerifyError::OutsideWindow(301)));
        assert_eq!(ok(body, "1790000000", &sig, ts - 400), Err(VerifyError::OutsideWindow(400)));
        assert_eq!(ok(body, "soon", &sig, ts), Err(VerifyError::BadTimestamp));
        assert_eq!(ok(body, "1790000000", "md5=abc", ts), Err(VerifyError::BadSignatureFormat));
        let other = SigningKey::new("another-key-0123456789").unwrap();
        assert_eq!(
            verify(other.expose(), Some("1790000000"), Some(&sig), body, ts, DEFAULT_TOLERANCE),
            Err(VerifyError::Mismatch)
        );
        // Rotation: a list where one value matches.
        let both = format!("{}, {sig}", sign(&other, ts, body));
        assert_eq!(ok(body, "1790000000", &both, ts), Ok(()));
        assert_eq!(
            verify(key().expose(), None, Some(&sig), body, ts, DEFAULT_TOLERANCE),
            Err(VerifyError::MissingTimestamp)
        );
        assert_eq!(
            verify(key().expose(), Some("1790000000"), None, body, ts, DEFAULT_TOLERANCE),
            Err(VerifyError::MissingSignature)
        );
    }

    #[test]
    fn signature_matches_an_independent_computation() {
        // What a receiver in another language does: HMAC-SHA256(key, "1700000000." + body), hex.
        let k = SigningKey::new("key-key-key-key-key").unwrap();
        let expected = {
            let mut m = <HmacSha256 as Mac>::new_from_slice(b"key-key-key-key-key").unwrap();
            m.update(b"1700000000.payload");
            hex::encode(m.finalize().into_bytes())
        };
        assert_eq!(sign(&k, 1_700_000_000, b"payload"), format!("sha256={expected}"));
    }

    #[test]
    fn body_is_a_cloudevent_with_the_notification_as_data() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
        let n = sample(now);
        let b = body(&n, "evt-1").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "evt-1");
        assert_eq!(v["type"], EVENT_TYPE);
        assert_eq!(v["source"], EVENT_SOURCE);
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["severity"], "high");
        assert_eq!(v["subject"], n.resource());
        assert_eq!(v["dedupekey"], n.dedupe_key().as_str());
        assert_eq!(serde_json::from_value::<Notification>(v["data"].clone()).unwrap(), n);
        // And the SDK reads it back as a CloudEvent.
        let ev: cloudevents::Event = serde_json::from_slice(&b).unwrap();
        assert_eq!(cloudevents::AttributesReader::ty(&ev), EVENT_TYPE);
    }

    proptest! {
        #[test]
        fn verify_never_panics(ts in proptest::option::of(".{0,20}"), sig in proptest::option::of(".{0,140}"), body in proptest::collection::vec(any::<u8>(), 0..64), now in any::<i64>()) {
            let _ = verify(b"k", ts.as_deref(), sig.as_deref(), &body, now, DEFAULT_TOLERANCE);
        }

        #[test]
        fn any_body_round_trips_and_any_flip_fails(body in proptest::collection::vec(any::<u8>(), 1..256), ts in 0i64..4_000_000_000, flip in any::<prop::sample::Index>()) {
            let sig = sign(&key(), ts, &body);
            prop_assert_eq!(verify(key().expose(), Some(&ts.to_string()), Some(&sig), &body, ts, DEFAULT_TOLERANCE), Ok(()));
            let mut bad = body.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1;
            prop_assert_eq!(verify(key().expose(), Some(&ts.to_string()), Some(&sig), &bad, ts, DEFAULT_TOLERANCE), Err(VerifyError::Mismatch));
        }
    }
}
