//! The Event Grid event schema: `id, topic, subject, eventType, eventTime, data,
//! dataVersion, metadataVersion` (unknown keys ignored), and the subscription handshake.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{DecodeError, Decoded, code, domain};

/// The Event Grid envelope. `data` is kept as a value and decoded per event type.
#[derive(Debug, Deserialize)]
struct Envelope {
    id: Option<serde_json::Value>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(rename = "eventType")]
    event_type: Option<serde_json::Value>,
    #[serde(rename = "eventTime", default)]
    event_time: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

pub(super) fn decode(value: serde_json::Value) -> Result<Decoded, DecodeError> {
    let env: Envelope = serde_json::from_value(value)
        .map_err(|e| DecodeError::new(code::BAD_EVENT, format!("not an Event Grid event: {e}")))?;
    let id = required_string(env.id, "id")?;
    let event_type = required_string(env.event_type, "eventType")?;
    let at = |e: DecodeError| e.at(format_args!("event {id:?} ({event_type})"));
    if event_type == domain::SUBSCRIPTION_VALIDATION {
        let code = env
            .data
            .as_ref()
            .and_then(|d| d.get("validationCode"))
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| at(DecodeError::new(code::BAD_DATA, "data.validationCode is missing")))?;
        return Ok(Decoded::Validation { id, validation_code: code.to_owned() });
    }
    let time = match env.event_time.as_deref() {
        Some(t) => parse_time(t, "eventTime").map_err(at)?,
        None => return Err(at(DecodeError::new(code::BAD_EVENT, "eventTime is missing"))),
    };
    let header = domain::Header {
        id: &id,
        event_type: &event_type,
        subject: env.subject.as_deref().unwrap_or_default(),
        source: env.topic.as_deref(),
        time,
    };
    domain::to_domain(header, env.data.as_ref()).map_err(at)
}

fn required_string(v: Option<serde_json::Value>, field: &str) -> Result<String, DecodeError> {
    match v {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(serde_json::Value::String(_)) => Err(DecodeError::new(code::BAD_EVENT, format!("{field} is empty"))),
        Some(other) => Err(DecodeError::new(
            code::BAD_EVENT,
            format!("{field} must be a string, found {}", super::json_kind(&other)),
        )),
        None => Err(DecodeError::new(code::BAD_EVENT, format!("{field} is missing"))),
    }
}

pub(super) fn parse_time(s: &str, field: &str) -> Result<DateTime<Utc>, DecodeError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DecodeError::new(code::BAD_EVENT, format!("{field} {s:?} is not an RFC 3339 time: {e}")))
}
