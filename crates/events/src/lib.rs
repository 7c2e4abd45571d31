//! Wire formats → typed domain events.
//!
//! - [`functions`]: the Functions custom-handler envelope (`{"Data":…,"Metadata":…}`) and the
//!   trigger value inside it (object, array, or a JSON string of either, possibly twice).
//! - [`eventgrid`]: the Event Grid event schema, including the subscription handshake.
//! - [`cloudevents`]: CloudEvents 1.0 (structured, batch, binary) via cloudevents-sdk.
//! - [`domain`]: an event's type and `data` → [`cmkguard_model::EventKind`], tolerant of the
//!   quirks Azure really sends (key casing, a trailing space in a key name, numbers as strings).
//!
//! Decoding never panics; every failure is a [`DecodeError`] that says what and where.

use std::borrow::Cow;

use cmkguard_model::Event;
use serde::Serialize;
use serde_json::value::RawValue;

pub mod cloudevents;
pub mod domain;
pub mod eventgrid;
pub mod functions;

/// The event types cmkguard acts on, and the Functions function that receives each.
pub const HANDLED_EVENT_TYPES: &[(&str, &str)] = &[
    (domain::KEY_NEAR_EXPIRY, "KeyVaultEvents"),
    (domain::KEY_EXPIRED, "KeyVaultEvents"),
    (domain::KEY_NEW_VERSION_CREATED, "KeyVaultEvents"),
    (domain::RESOURCE_WRITE_SUCCESS, "RegistryEvents"),
];

/// The outcome of decoding one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// An event cmkguard acts on (boxed: it is much larger than the other variants).
    Event(Box<Event>),
    /// A well-formed event of a type (or operation) cmkguard does not act on.
    Ignored(Ignored),
    /// Event Grid's subscription-validation handshake (Event Grid schema).
    Validation { id: String, validation_code: String },
}

/// An acknowledged, unhandled event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    pub id: String,
    pub event_type: String,
    pub reason: &'static str,
}

/// Why input could not be decoded. `code` is stable and machine-readable; `message`
/// names the field or position that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct DecodeError {
    pub code: &'static str,
    pub message: String,
}

impl DecodeError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Prefixes the message with where the error happened (e.g. `event 3`).
    pub fn at(mut self, place: impl std::fmt::Display) -> Self {
        self.message = format!("{place}: {}", self.message);
        self
    }
}

/// Error codes, shared by the HTTP answers.
pub mod code {
    pub const NOT_JSON: &str = "not_json";
    pub const BAD_ENVELOPE: &str = "bad_envelope";
    pub const BAD_EVENT: &str = "bad_event";
    pub const BAD_DATA: &str = "bad_data";
    pub const TOO_DEEP: &str = "too_deep";
}

/// Decodes a JSON document holding one event or an array of events, in either the
/// Event Grid or the CloudEvents schema (told apart per event by `specversion`).
/// All events are decoded before any is acted on: one bad event fails the whole batch.
///
/// The fast path borrows: each event is split into raw fields and only the fields
/// cmkguard reads are parsed (a `ResourceWriteSuccess` carries kilobytes of claims that
/// are skipped, not built). When it fails, the document is scanned again (without
/// building it) so the error names the real problem (bad syntax, nesting too deep) first.
/// A batch holds at most [`MAX_BATCH`] events: nothing is allocated per item beyond that.
pub fn decode_events_json(bytes: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    check_utf8(bytes)?;
    decode_fast(bytes).map_err(|e| match check_syntax(bytes) {
        Err(syntax) => syntax,
        Ok(()) => e,
    })
}

/// Most events in one batch. Event Grid sends at most 5,000 (`maxEventsPerBatch`); without
/// a bound, a 4 MiB body of `{},{},…` made the decoder allocate ≈ 250 MB of envelopes
/// before refusing the first one (found by the hostile-input test).
pub const MAX_BATCH: usize = 5000;

const TOO_MANY: &str = "too many events in one batch";

/// A JSON array of at most [`MAX_BATCH`] items.
struct Bounded<T>(Vec<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Bounded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Items<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Items<T> {
            type Value = Bounded<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of events")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == MAX_BATCH {
                        return Err(serde::de::Error::custom(TOO_MANY));
                    }
                    items.push(item);
                }
                Ok(Bounded(items))
            }
        }
        d.deserialize_seq(Items(std::marker::PhantomData))
    }
}

fn decode_fast(bytes: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    let not_json = |e: serde_json::Error| DecodeError::new(code::NOT_JSON, format!("the body is not valid JSON: {e}"));
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(DecodeError::new(code::NOT_JSON, "the body is empty: expected JSON")),
        Some(b'[') => {
            // One pass over a well-formed batch; the item-by-item path below only runs to
            // find and name the bad item when this fails.
            // (CloudEvents go item by item: the SDK needs each whole event.)
            if let Ok(Bounded(wires)) = serde_json::from_slice::<Bounded<Wire<'_>>>(bytes)
                && !wires.is_empty()
                && wires.iter().all(|w| w.specversion.is_none())
            {
                return wires
                    .into_iter()
                    .enumerate()
                    .map(|(i, w)| decode_wire(w, None).map_err(|e| e.at(format_args!("event {i}"))))
                    .collect();
            }
            let items: Vec<&RawValue> = match serde_json::from_slice::<Bounded<&RawValue>>(bytes) {
                Ok(Bounded(items)) => items,
                Err(e) if e.to_string().starts_with(TOO_MANY) => {
                    return Err(DecodeError::new(
                        code::BAD_ENVELOPE,
                        format!("the batch has more than {MAX_BATCH} events (Event Grid sends at most {MAX_BATCH})"),
                    ));
                }
                Err(e) => return Err(not_json(e)),
            };
            if items.is_empty() {
                return Err(DecodeError::new(
                    code::BAD_ENVELOPE,
                    "the batch is an empty array: expected at least one event",
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, r)| decode_raw(r).map_err(|e| e.at(format_args!("event {i}"))))
                .collect()
        }
        Some(b'{') => {
            let raw: &RawValue = serde_json::from_slice(bytes).map_err(not_json)?;
            Ok(vec![decode_raw(raw)?])
        }
        Some(_) => {
            let v = parse_json(bytes)?;
            Err(DecodeError::new(
                code::BAD_ENVELOPE,
                format!("expected an event object or an array of events, found {}", json_kind(&v)),
            ))
        }
    }
}

/// As [`decode_events_json`], from an already parsed value.
pub fn decode_events_value(value: serde_json::Value) -> Result<Vec<Decoded>, DecodeError> {
    let bytes = serde_json::to_vec(&value).map_err(|e| DecodeError::new(code::NOT_JSON, e.to_string()))?;
    decode_events_json(&bytes)
}

/// The envelope fields of either schema, borrowed from the input and parsed on demand.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Wire<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(rename = "eventType", borrow, default)]
    pub event_type: Option<&'a RawValue>,
    #[serde(default)]
    pub specversion: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    pub topic: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub subject: Option<&'a RawValue>,
    #[serde(rename = "eventTime", borrow, default)]
    pub event_time: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// Decodes one event given as raw JSON.
fn decode_raw(raw: &RawValue) -> Result<Decoded, DecodeError> {
    let text = raw.get();
    if !text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        return Err(DecodeError::new(
            code::BAD_EVENT,
            format!("an event must be a JSON object, found {}", json_kind(&v)),
        ));
    }
    let wire: Wire<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::new(code::BAD_EVENT, format!("not an event: {e}")))?;
    decode_wire(wire, Some(raw))
}

/// Decodes one event from its raw fields (`whole`: the event's JSON, needed for CloudEvents).
fn decode_wire(wire: Wire<'_>, whole: Option<&RawValue>) -> Result<Decoded, DecodeError> {
    if wire.specversion.is_some() {
        let whole = whole.ok_or_else(|| DecodeError::new(code::BAD_EVENT, "a CloudEvent must be decoded whole"))?;
        let value = serde_json::from_str(whole.get()).map_err(|e| DecodeError::new(code::NOT_JSON, e.to_string()))?;
        cloudevents::decode_structured(value)
    } else if wire.event_type.is_some() {
        eventgrid::decode(wire)
    } else {
        Err(DecodeError::new(
            code::BAD_EVENT,
            "neither an Event Grid event (no \"eventType\") nor a CloudEvent (no \"specversion\")",
        ))
    }
}

/// A raw JSON value that must be a string (or absent/null). Borrowed unless escaped.
pub(crate) fn raw_str<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Option<Cow<'a, str>>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with('"') {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        return Err(DecodeError::new(code::BAD_EVENT, format!("{field} must be a string, found {}", json_kind(&v))));
    }
    let s: Cow<'a, str> = match serde_json::from_str::<&'a str>(text) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(
            serde_json::from_str::<String>(text)
                .map_err(|e| DecodeError::new(code::BAD_EVENT, format!("{field} is not a valid string: {e}")))?,
        ),
    };
    Ok(Some(s))
}

/// Refuses a body that is not UTF-8 (JSON must be, RFC 8259 §8.1). serde_json checks the
/// strings it reads but not the ones it skips (unknown fields, `Metadata`), so without
/// this a body with invalid bytes in an ignored field was accepted (found by fuzzing).
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<(), DecodeError> {
    std::str::from_utf8(bytes).map(|_| ()).map_err(|e| {
        DecodeError::new(
            code::NOT_JSON,
            format!("the body is not valid JSON: not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        )
    })
}

/// Parses JSON with a clear message (serde_json refuses nesting deeper than 128 levels).
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, DecodeError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::new(code::NOT_JSON, "the body is empty: expected JSON"));
    }
    serde_json::from_slice(bytes).map_err(json_error)
}

/// As [`parse_json`], without building the document.
fn check_syntax(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::new(code::NOT_JSON, "the body is empty: expected JSON"));
    }
    serde_json::from_slice::<Syntax>(bytes).map(|_| ()).map_err(json_error)
}

/// Any JSON value, read and dropped. Unlike `IgnoredAny` (which serde_json skips in a loop)
/// it descends through `deserialize_any`, so serde_json's nesting limit still applies.
struct Syntax;

impl<'de> serde::Deserialize<'de> for Syntax {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Syntax;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Syntax, E> {
                Ok(Syntax)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Syntax, E> {
                Ok(Syntax)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Syntax, E> {
                Ok(Syntax)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Syntax, E> {
                Ok(Syntax)
            }
            fn visit_str<E>(self, _: &str) -> Result<Syntax, E> {
                Ok(Syntax)
            }
            fn visit_unit<E>(self) -> Result<Syntax, E> {
                Ok(Syntax)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Syntax, A::Error> {
                while seq.next_element::<Syntax>()?.is_some() {}
                Ok(Syntax)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Syntax, A::Error> {
                while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    map.next_value::<Syntax>()?;
                }
                Ok(Syntax)
            }
        }
        d.deserialize_any(V)
    }
}

fn json_error(e: serde_json::Error) -> DecodeError {
    if e.to_string().contains("recursion limit") {
        DecodeError::new(
            code::TOO_DEEP,
            format!("the JSON is nested too deeply (line {}, column {})", e.line(), e.column()),
        )
    } else {
        DecodeError::new(code::NOT_JSON, format!("the body is not valid JSON: {e}"))
    }
}

pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
