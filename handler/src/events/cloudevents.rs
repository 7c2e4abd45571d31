//! CloudEvents 1.0, through cloudevents-sdk: structured (`application/cloudevents+json`,
//! one object or — as Key Vault's docs show — an array), batch
//! (`application/cloudevents-batch+json`) and binary mode (`ce-*` headers + body).

use cloudevents::event::{AttributesReader, Data};
use serde_json::Value;

use super::{DecodeError, Decoded, code, domain};

/// Decodes one structured-mode CloudEvent object.
pub fn decode_structured(value: Value) -> Result<Decoded, DecodeError> {
    let id_hint = value.get("id").and_then(Value::as_str).unwrap_or("?").to_owned();
    let event: cloudevents::Event = serde_json::from_value(value)
        .map_err(|e| DecodeError::new(code::BAD_EVENT, format!("not a valid CloudEvent (id {id_hint:?}): {e}")))?;
    from_sdk(&event)
}

/// Decodes a binary-mode CloudEvent from HTTP headers and body.
pub fn decode_binary(headers: &http::HeaderMap, body: Vec<u8>) -> Result<Decoded, DecodeError> {
    let event = cloudevents::binding::http::to_event(headers, body)
        .map_err(|e| DecodeError::new(code::BAD_EVENT, format!("not a valid binary-mode CloudEvent: {e}")))?;
    from_sdk(&event)
}

fn from_sdk(event: &cloudevents::Event) -> Result<Decoded, DecodeError> {
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
    domain::to_domain(header, data.as_ref()).map_err(at)
}
