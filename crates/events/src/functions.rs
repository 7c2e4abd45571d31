//! The Azure Functions custom-handler envelope.
//!
//! The host POSTs `{"Data": {<binding>: <value>}, "Metadata": {...}}` to `/{FunctionName}`.
//! For an eventGridTrigger the value is one event (or an array with `cardinality: many`),
//! and the host may deliver it as a JSON string holding that JSON — sometimes a string
//! holding a string (see FACTS.md §1), so strings are parsed until an object or array
//! appears.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{DecodeError, Decoded, code, json_kind};

/// The binding name our `function.json` files give the trigger.
pub const EVENT_BINDING: &str = "event";
/// How many layers of string encoding are unwrapped before giving up.
const MAX_STRING_LAYERS: usize = 4;

/// A parsed invocation request; the binding values stay raw until used.
#[derive(Debug)]
pub struct Invocation<'a> {
    pub data: BTreeMap<String, &'a RawValue>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "Data", borrow, default)]
    data: Option<&'a RawValue>,
}

/// Parses the envelope. Only an envelope no Functions host would send (not JSON, not an
/// object, no `Data` object) is an error.
pub fn parse_invocation(bytes: &[u8]) -> Result<Invocation<'_>, DecodeError> {
    super::check_utf8(bytes)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let env: Envelope<'_> = match first {
        Some(b'{') => serde_json::from_slice(bytes).map_err(|_| {
            super::parse_json(bytes).err().unwrap_or_else(|| {
                DecodeError::new(code::BAD_ENVELOPE, "the invocation body is not a Functions invocation")
            })
        })?,
        _ => {
            let value = super::parse_json(bytes)?;
            return Err(DecodeError::new(
                code::BAD_ENVELOPE,
                format!("the invocation body must be a JSON object with \"Data\", found {}", json_kind(&value)),
            ));
        }
    };
    let raw = env
        .data
        .filter(|d| d.get() != "null")
        .ok_or_else(|| DecodeError::new(code::BAD_ENVELOPE, "the invocation body has no \"Data\" object"))?;
    if !raw.get().starts_with('{') {
        let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        return Err(DecodeError::new(
            code::BAD_ENVELOPE,
            format!("\"Data\" must be an object, found {}", json_kind(&v)),
        ));
    }
    let data: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())
        .map_err(|e| DecodeError::new(code::BAD_ENVELOPE, format!("\"Data\" is not valid: {e}")))?;
    Ok(Invocation { data })
}

impl Invocation<'_> {
    /// The trigger binding's raw value: `event`, or the only binding there is.
    fn trigger(&self) -> Result<&RawValue, DecodeError> {
        match self.data.get(EVENT_BINDING) {
            Some(v) => Ok(v),
            None if self.data.len() == 1 => Ok(self.data.values().next().copied().expect("one value")),
            None => Err(DecodeError::new(
                code::BAD_ENVELOPE,
                format!(
                    "\"Data\" has no \"{EVENT_BINDING}\" binding (found keys: {:?})",
                    self.data.keys().collect::<Vec<_>>()
                ),
            )),
        }
    }

    /// Decodes the trigger value: an event, an array of events, or a JSON string of
    /// either, unwrapped layer by layer.
    pub fn decode_trigger(&self) -> Result<Vec<Decoded>, DecodeError> {
        let mut text: Cow<'_, str> = Cow::Borrowed(self.trigger()?.get());
        for layer in 0..=MAX_STRING_LAYERS {
            match text.trim_start().bytes().next() {
                Some(b'"') => {
                    let inner: String = serde_json::from_str(&text).map_err(|e| {
                        DecodeError::new(code::BAD_EVENT, format!("the event value is not a valid JSON string: {e}"))
                    })?;
                    text = Cow::Owned(inner);
                }
                Some(b'{' | b'[') => {
                    return super::decode_events_json(text.as_bytes()).map_err(|e| {
                        if layer > 0 && e.code == code::NOT_JSON {
                            DecodeError::new(
                                code::BAD_EVENT,
                                e.message.replace("the body is", "the event value is a string that is"),
                            )
                        } else {
                            e
                        }
                    });
                }
                _ => {
                    return Err(match serde_json::from_str::<Value>(&text) {
                        Err(e) => DecodeError::new(
                            code::BAD_EVENT,
                            format!("the event value is a string that is not valid JSON: {e}"),
                        ),
                        Ok(v) => DecodeError::new(
                            code::BAD_EVENT,
                            format!(
                                "the event value must be an object, an array or a JSON string of one, found {}",
                                json_kind(&v)
                            ),
                        ),
                    });
                }
            }
        }
        Err(DecodeError::new(
            code::BAD_EVENT,
            format!("the event value is string-encoded more than {MAX_STRING_LAYERS} times"),
        ))
    }
}

/// Parses string layers of a value until an object or array appears (the same rule as
/// [`Invocation::decode_trigger`], for callers that already hold a value).
pub fn unwrap_strings(mut value: Value) -> Result<Value, DecodeError> {
    for _ in 0..=MAX_STRING_LAYERS {
        match value {
            Value::Object(_) | Value::Array(_) => return Ok(value),
            Value::String(s) => {
                value = serde_json::from_str(&s).map_err(|e| {
                    DecodeError::new(
                        code::BAD_EVENT,
                        format!("the event value is a string that is not valid JSON: {e}"),
                    )
                })?;
            }
            other => {
                return Err(DecodeError::new(
                    code::BAD_EVENT,
                    format!(
                        "the event value must be an object, an array or a JSON string of one, found {}",
                        json_kind(&other)
                    ),
                ));
            }
        }
    }
    Err(DecodeError::new(
        code::BAD_EVENT,
        format!("the event value is string-encoded more than {MAX_STRING_LAYERS} times"),
    ))
}
