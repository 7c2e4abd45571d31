//! The Event Grid event schema: `id, topic, subject, eventType, eventTime, data,
//! dataVersion, metadataVersion` (unknown keys ignored), and the subscription handshake.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::{DecodeError, Decoded, Wire, code, domain, raw_str};

pub(super) fn decode(env: Wire<'_>) -> Result<Decoded, DecodeError> {
    let id = required(raw_str(env.id, "id")?, "id")?;
    let event_type = required(raw_str(env.event_type, "eventType")?, "eventType")?;
    let at = |e: DecodeError| e.at(format_args!("event {id:?} ({event_type})"));
    if event_type == domain::SUBSCRIPTION_VALIDATION {
        let data: Option<serde_json::Value> = env.data.and_then(|d| serde_json::from_str(d.get()).ok());
        let code = data
            .as_ref()
            .and_then(|d| d.get("validationCode"))
            .and_then(|c| c.as_str())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| at(DecodeError::new(code::BAD_DATA, "data.validationCode is missing")))?;
        return Ok(Decoded::Validation { id, validation_code: code.to_owned() });
    }
    let time = match raw_str(env.event_time, "eventTime").map_err(at)? {
        Some(t) => parse_time(&t, "eventTime").map_err(at)?,
        None => return Err(at(DecodeError::new(code::BAD_EVENT, "eventTime is missing"))),
    };
    let subject = raw_str(env.subject, "subject").map_err(at)?;
    let topic = raw_str(env.topic, "topic").map_err(at)?;
    let header = domain::Header {
        id: &id,
        event_type: &event_type,
        subject: subject.as_deref().unwrap_or_default(),
        source: topic.as_deref(),
        time,
    };
    domain::to_domain(header, env.data).map_err(at)
}

fn required(v: Option<Cow<'_, str>>, field: &str) -> Result<String, DecodeError> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(_) => Err(DecodeError::new(code::BAD_EVENT, format!("{field} is empty"))),
        None => Err(DecodeError::new(code::BAD_EVENT, format!("{field} is missing"))),
    }
}

pub(super) fn parse_time(s: &str, field: &str) -> Result<DateTime<Utc>, DecodeError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DecodeError::new(code::BAD_EVENT, format!("{field} {s:?} is not an RFC 3339 time: {e}")))
}
