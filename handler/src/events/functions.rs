//! The Azure Functions custom-handler envelope.
//!
//! The host POSTs `{"Data": {<binding>: <value>}, "Metadata": {...}}` to `/{FunctionName}`.
//! For an eventGridTrigger the value is one event (or an array with `cardinality: many`),
//! and the host may deliver it as a JSON string holding that JSON — sometimes a string
//! holding a string (see FACTS.md §1), so strings are parsed until an object or array
//! appears.

use serde_json::{Map, Value};

use super::{DecodeError, code, json_kind};

/// The binding name our `function.json` files give the trigger.
pub const EVENT_BINDING: &str = "event";
/// How many layers of string encoding are unwrapped before giving up.
const MAX_STRING_LAYERS: usize = 4;

/// A parsed invocation request.
#[derive(Debug)]
pub struct Invocation {
    pub data: Map<String, Value>,
    pub metadata: Map<String, Value>,
}

/// Parses the envelope. Only an envelope no Functions host would send (not JSON, not an
/// object, no `Data` object) is an error.
pub fn parse_invocation(bytes: &[u8]) -> Result<Invocation, DecodeError> {
    let value = super::parse_json(bytes)?;
    let Value::Object(mut map) = value else {
        return Err(DecodeError::new(
            code::BAD_ENVELOPE,
            format!("the invocation body must be a JSON object with \"Data\", found {}", json_kind(&value)),
        ));
    };
    let data = match map.remove("Data") {
        Some(Value::Object(d)) => d,
        Some(other) => {
            return Err(DecodeError::new(
                code::BAD_ENVELOPE,
                format!("\"Data\" must be an object, found {}", json_kind(&other)),
            ));
        }
        None => return Err(DecodeError::new(code::BAD_ENVELOPE, "the invocation body has no \"Data\" object")),
    };
    let metadata = match map.remove("Metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(Invocation { data, metadata })
}

impl Invocation {
    /// The trigger value, unwrapped to an object or array.
    pub fn trigger_value(&mut self) -> Result<Value, DecodeError> {
        let raw = match self.data.remove(EVENT_BINDING) {
            Some(v) => v,
            None if self.data.len() == 1 => self.data.values().next().cloned().unwrap_or(Value::Null),
            None => {
                return Err(DecodeError::new(
                    code::BAD_ENVELOPE,
                    format!(
                        "\"Data\" has no \"{EVENT_BINDING}\" binding (found keys: {:?})",
                        self.data.keys().collect::<Vec<_>>()
                    ),
                ));
            }
        };
        unwrap_strings(raw)
    }
}

/// Parses string layers until an object or array appears.
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
