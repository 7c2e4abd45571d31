//! CloudEvents 1.0, through cloudevents-sdk: structured (`application/cloudevents+json`,
//! one object or — as Key Vault's docs show — an array), batch
//! (`application/cloudevents-batch+json`) and binary mode (`ce-*` headers + body).

use cloudevents::event::{AttributesReader, Data};
use serde_json::Value;

use super::{DecodeError, Decoded, code, domain};

/// Decodes one structured-mode CloudEvent object.
pub fn decode_structured(mut value: Value) -> Result<Decoded, DecodeError> {
    // Microsoft's own sample sends `"dataschema": "#"`, a relative reference the SDK refuses
    // (the spec wants an absolute URI). cmkguard does not use dataschema, so a relative one
    // is dropped rather than failing an event Azure really sends.
    if let Some(obj) = value.as_object_mut()
        && obj.get("dataschema").and_then(Value::as_str).is_some_and(|s| !is_absolute_uri(s))
    {
        obj.remove("dataschema");
    }
    let id_hint = value.get("id").and_then(Value::as_str).unwrap_or("?").to_owned();
    let event: cloudevents::Event = serde_json::from_value(value)
        .map_err(|e| DecodeError::new(code::BAD_EVENT, format!("not a valid CloudEvent (id {id_hint:?}): {e}")))?;
    from_sdk(&event)
}

/// Decodes a binary-mode CloudEvent from HTTP headers and body.
pub fn decode_binary(headers: &http::HeaderMap, body: Vec<u8>) -> Result<Decoded, DecodeError> {
    let relative_schema =
        headers.get("ce-dataschema").and_then(|v| v.to_str().ok()).is_some_and(|s| !is_absolute_uri(s));
    let scrubbed;
    let headers = if relative_schema {
        let mut h = headers.clone();
        h.remove("ce-dataschema");
        scrubbed = h;
        &scrubbed
    } else {
        headers
    };
    let event = cloudevents::binding::http::to_event(headers, body)
        .map_err(|e| DecodeError::new(code::BAD_EVENT, format!("not a valid binary-mode CloudEvent: {e}")))?;
    from_sdk(&event)
}

fn from_sdk(event: &cloudevents::Event) -> Result<Decoded, DecodeError> {
    // The id is the ledger's idempotency key: a blank one would make every such event a
    // "redelivery" of the first. The SDK accepts it; Event Grid events are refused the same
    // way (found by fuzzing, binary mode).
    if event.id().trim().is_empty() {
        return Err(DecodeError::new(code::BAD_EVENT, "the CloudEvent's id is empty"));
    }
    let at = |e: DecodeError| e.at(format_args!("event {:?} ({})", event.id(), event.ty()));
    let data: Option<Value> = match event.data() {
        None => None,
        Some(Data::Json(v)) => Some(v.clone()),
        Some(Data::String(s)) => Some(
            serde_json::from_str(s)
                .map_err(|e| at(DecodeError::new(code::BAD_DATA, format!("data is a string that is not JSON: {e}"))))?,
        ),
        Some(Data::Binary(b)) => Some(
            serde_json::from_slice(b)
                .map_err(|e| at(DecodeError::new(code::BAD_DATA, format!("data is not JSON: {e}"))))?,
        ),
    };
    let time = event.time().copied().unwrap_or_else(chrono::Utc::now);
    let source = event.source().to_string();
    let header = domain::Header {
        id: event.id(),
        event_type: event.ty(),
        subject: event.subject().unwrap_or_default(),
        source: Some(&source),
        time,
    };
    let raw = match &data {
        Some(v) => Some(
            serde_json::value::to_raw_value(v)
                .map_err(|e| at(DecodeError::new(code::BAD_DATA, format!("data: {e}"))))?,
        ),
        None => None,
    };
    domain::to_domain(header, raw.as_deref()).map_err(at)
}

/// `scheme:` followed by something, per RFC 3986 (scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )).
fn is_absolute_uri(s: &str) -> bool {
    match s.split_once(':') {
        Some((scheme, rest)) => {
            !rest.is_empty()
                && scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}
