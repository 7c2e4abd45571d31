//! An event's type and `data` → the typed domain event.
//!
//! Key Vault `data` is matched leniently because Microsoft's own samples drift: keys are
//! compared case-insensitively after trimming (`"ObjectName "` has a trailing space in one
//! published sample, camelCase in another), string values are trimmed, and `NBF`/`EXP` may
//! be numbers or numeric strings, or absent.

use chrono::{DateTime, Utc};
use cmkguard_model::{Event, EventKind, KeyEvent, KeyId, RegistryWrite, ResourceId};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::{DecodeError, Decoded, Ignored, code};

pub const KEY_NEAR_EXPIRY: &str = "Microsoft.KeyVault.KeyNearExpiry";
pub const KEY_EXPIRED: &str = "Microsoft.KeyVault.KeyExpired";
pub const KEY_NEW_VERSION_CREATED: &str = "Microsoft.KeyVault.KeyNewVersionCreated";
pub const RESOURCE_WRITE_SUCCESS: &str = "Microsoft.Resources.ResourceWriteSuccess";
pub const SUBSCRIPTION_VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// The ARM operation of a registry create or update.
pub const REGISTRY_WRITE_OPERATION: &str = "Microsoft.ContainerRegistry/registries/write";
const REGISTRY_TYPE: &str = "Microsoft.ContainerRegistry/registries";

/// The envelope fields both schemas share.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub subject: &'a str,
    /// `topic` (Event Grid) or `source` (CloudEvents).
    pub source: Option<&'a str>,
    pub time: DateTime<Utc>,
}

/// Maps a decoded envelope and its raw data to a domain event, or says why it is ignored.
pub fn to_domain(h: Header<'_>, data: Option<&RawValue>) -> Result<Decoded, DecodeError> {
    let ignored =
        |reason| Ok(Decoded::Ignored(Ignored { id: h.id.to_owned(), event_type: h.event_type.to_owned(), reason }));
    let make = |kind| {
        Box::new(Event {
            id: h.id.to_owned(),
            time: h.time,
            subject: h.subject.to_owned(),
            event_type: h.event_type.to_owned(),
            kind,
        })
    };
    // Event types are matched case-insensitively: Event Grid filters are case-insensitive too.
    let ty = h.event_type;
    if ty.eq_ignore_ascii_case(KEY_NEAR_EXPIRY) {
        Ok(Decoded::Event(make(EventKind::KeyNearExpiry(key_event(&h, data)?))))
    } else if ty.eq_ignore_ascii_case(KEY_EXPIRED) {
        Ok(Decoded::Event(make(EventKind::KeyExpired(key_event(&h, data)?))))
    } else if ty.eq_ignore_ascii_case(KEY_NEW_VERSION_CREATED) {
        Ok(Decoded::Event(make(EventKind::KeyNewVersionCreated(key_event(&h, data)?))))
    } else if ty.eq_ignore_ascii_case(RESOURCE_WRITE_SUCCESS) {
        match registry_write(data)? {
            Some(w) => Ok(Decoded::Event(make(EventKind::RegistryWritten(w)))),
            None => ignored("not a container registry write"),
        }
    } else if ty.eq_ignore_ascii_case(SUBSCRIPTION_VALIDATION) {
        ignored("subscription validation is answered by the Event Grid extension")
    } else {
        ignored("event type not handled by cmkguard")
    }
}

fn bad(message: impl Into<String>) -> DecodeError {
    DecodeError::new(code::BAD_DATA, message)
}

/// The fields of a Key Vault event's data, found leniently.
#[derive(Default)]
struct KvFields<'a> {
    id: Option<&'a Value>,
    vault_name: Option<&'a Value>,
    object_type: Option<&'a Value>,
    object_name: Option<&'a Value>,
    version: Option<&'a Value>,
    nbf: Option<&'a Value>,
    exp: Option<&'a Value>,
}

fn key_event(h: &Header<'_>, data: Option<&RawValue>) -> Result<KeyEvent, DecodeError> {
    // Key Vault data is small; a map is the simplest way to match its keys leniently.
    let data: Option<Value> = match data {
        Some(raw) => Some(serde_json::from_str(raw.get()).map_err(|e| bad(format!("data is not valid JSON: {e}")))?),
        None => None,
    };
    let map = match &data {
        Some(Value::Null) | None => return Err(bad("data is missing")),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(bad(format!("data must be an object, found {}", super::json_kind(other)))),
    };
    let mut f = KvFields::default();
    for (k, v) in map {
        let k = k.trim();
        let slot = if k.eq_ignore_ascii_case("id") {
            &mut f.id
        } else if k.eq_ignore_ascii_case("vaultName") {
            &mut f.vault_name
        } else if k.eq_ignore_ascii_case("objectType") {
            &mut f.object_type
        } else if k.eq_ignore_ascii_case("objectName") {
            &mut f.object_name
        } else if k.eq_ignore_ascii_case("version") {
            &mut f.version
        } else if k.eq_ignore_ascii_case("nbf") {
            &mut f.nbf
        } else if k.eq_ignore_ascii_case("exp") {
            &mut f.exp
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(bad(format!("data has the field {k:?} more than once (keys are matched case-insensitively)")));
        }
        *slot = Some(v);
    }
    if let Some(t) = opt_str(f.object_type, "ObjectType")?
        && !t.eq_ignore_ascii_case("Key")
    {
        return Err(bad(format!("data.ObjectType is {t:?} but a key event must be about a Key")));
    }
    let id_text = req_str(f.id, "Id")?;
    let key_id = KeyId::parse(id_text).map_err(|e| bad(format!("data.Id: {e}")))?;
    let key_name = opt_str(f.object_name, "ObjectName")?.map(str::to_owned).unwrap_or_else(|| key_id.name().to_owned());
    if !key_name.eq_ignore_ascii_case(key_id.name()) {
        return Err(bad(format!(
            "data.ObjectName {key_name:?} does not match the key in data.Id ({:?})",
            key_id.name()
        )));
    }
    let version = match (opt_str(f.version, "Version")?, key_id.version()) {
        (Some(v), Some(idv)) if !v.eq_ignore_ascii_case(idv) => {
            return Err(bad(format!("data.Version {v:?} does not match the version in data.Id ({idv:?})")));
        }
        (Some(v), _) => v.to_owned(),
        (None, Some(idv)) => idv.to_owned(),
        (None, None) => return Err(bad("data has no Version and data.Id has none either")),
    };
    // A versionless data.Id takes data.Version, which must be a key version like any in an
    // id: unchecked, a version such as `v1/../x?y` went into the key id (and so into Key
    // Vault URLs), and the event did not survive its JSON round trip (found by fuzzing).
    let key_id = if key_id.is_versionless() {
        KeyId::new(&key_id.vault_uri(), key_id.name(), Some(&version))
            .ok()
            .filter(|k| k.version() == Some(version.as_str()))
            .ok_or_else(|| {
                bad(format!("data.Version {version:?} is not a key version (1-127 letters, digits and -)"))
            })?
    } else {
        key_id
    };
    let vault_name = match opt_str(f.vault_name, "VaultName")? {
        Some(v) => v.to_owned(),
        None => key_id.host().split('.').next().unwrap_or_default().to_owned(),
    };
    let vault_resource_id = h.source.and_then(|s| ResourceId::parse(s).ok());
    Ok(KeyEvent {
        vault_resource_id,
        vault_name,
        key_name,
        version,
        key_id,
        not_before: opt_unix_time(f.nbf, "NBF")?,
        expires: opt_unix_time(f.exp, "EXP")?,
    })
}

fn req_str<'a>(v: Option<&'a Value>, field: &str) -> Result<&'a str, DecodeError> {
    opt_str(v, field)?.ok_or_else(|| bad(format!("data.{field} is missing")))
}

fn opt_str<'a>(v: Option<&'a Value>, field: &str) -> Result<Option<&'a str>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim())),
        Some(other) => Err(bad(format!("data.{field} must be a string, found {}", super::json_kind(other)))),
    }
}

/// Unix seconds as a number or a numeric string (as every published sample sends them).
fn opt_unix_time(v: Option<&Value>, field: &str) -> Result<Option<DateTime<Utc>>, DecodeError> {
    let secs = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => {
            let t = s.trim();
            t.parse::<i64>()
                .ok()
                .or_else(|| t.parse::<f64>().ok().filter(|f| f.is_finite() && f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(|| bad(format!("data.{field} {s:?} is not a Unix time in seconds")))?
        }
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15).map(|f| f as i64))
            .ok_or_else(|| bad(format!("data.{field} {n} is not a whole number of seconds")))?,
        Some(other) => return Err(bad(format!("data.{field} must be a number, found {}", super::json_kind(other)))),
    };
    DateTime::from_timestamp(secs, 0).map(Some).ok_or_else(|| bad(format!("data.{field} {secs} is out of range")))
}

/// The part of `ResourceWriteSuccess` data cmkguard reads; the rest (kilobytes of claims
/// and authorization) is skipped without being built.
#[derive(Deserialize)]
struct WriteData<'a> {
    #[serde(rename = "operationName", borrow, default)]
    operation_name: Option<&'a RawValue>,
    #[serde(rename = "resourceUri", borrow, default)]
    resource_uri: Option<&'a RawValue>,
    #[serde(rename = "correlationId", borrow, default)]
    correlation_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    claims: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    appid: Option<Value>,
    #[serde(rename = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn", default)]
    upn: Option<Value>,
}

fn data_str<'a>(raw: Option<&'a RawValue>, field: &str) -> Result<Option<std::borrow::Cow<'a, str>>, DecodeError> {
    super::raw_str(raw, &format!("data.{field}")).map_err(|e| bad(e.message))
}

/// A `ResourceWriteSuccess` whose operation is a registry write, or `None` for other writes.
fn registry_write(data: Option<&RawValue>) -> Result<Option<RegistryWrite>, DecodeError> {
    let Some(raw) = data.filter(|r| r.get() != "null") else { return Err(bad("data is missing")) };
    if !raw.get().starts_with('{') {
        let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        return Err(bad(format!("data must be an object, found {}", super::json_kind(&v))));
    }
    let d: WriteData<'_> = serde_json::from_str(raw.get()).map_err(|e| bad(format!("data is not valid: {e}")))?;
    let op = data_str(d.operation_name, "operationName")?.ok_or_else(|| bad("data.operationName is missing"))?;
    if !op.trim().eq_ignore_ascii_case(REGISTRY_WRITE_OPERATION) {
        return Ok(None);
    }
    let uri = data_str(d.resource_uri, "resourceUri")?.ok_or_else(|| bad("data.resourceUri is missing"))?;
    let registry =
        ResourceId::parse_typed(uri.trim(), REGISTRY_TYPE).map_err(|e| bad(format!("data.resourceUri: {e}")))?;
    let non_empty =
        |v: Option<Value>| v.and_then(|v| v.as_str().map(|s| s.trim().to_owned())).filter(|s| !s.is_empty());
    let claims: Option<Claims> = d.claims.and_then(|c| serde_json::from_str(c.get()).ok());
    let caller = claims.and_then(|c| non_empty(c.appid).or_else(|| non_empty(c.upn)));
    let correlation_id = data_str(d.correlation_id, "correlationId").ok().flatten().map(|s| s.trim().to_owned());
    Ok(Some(RegistryWrite { registry, correlation_id: correlation_id.filter(|s| !s.is_empty()), caller }))
}
