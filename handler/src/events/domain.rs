//! An event's type and `data` → the typed domain event.
//!
//! Key Vault `data` is matched leniently because Microsoft's own samples drift: keys are
//! compared case-insensitively after trimming (`"ObjectName "` has a trailing space in one
//! published sample, camelCase in another), string values are trimmed, and `NBF`/`EXP` may
//! be numbers or numeric strings, or absent.

use chrono::{DateTime, Utc};
use cmkguard_model::{Event, EventKind, KeyEvent, KeyId, RegistryWrite, ResourceId};
use serde_json::Value;

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

/// Maps a decoded envelope and its data to a domain event, or says why it is ignored.
pub fn to_domain(h: Header<'_>, data: Option<&Value>) -> Result<Decoded, DecodeError> {
    let ignored =
        |reason| Ok(Decoded::Ignored(Ignored { id: h.id.to_owned(), event_type: h.event_type.to_owned(), reason }));
    let make = |kind| Event {
        id: h.id.to_owned(),
        time: h.time,
        subject: h.subject.to_owned(),
        event_type: h.event_type.to_owned(),
        kind,
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

fn key_event(h: &Header<'_>, data: Option<&Value>) -> Result<KeyEvent, DecodeError> {
    let map = match data {
        Some(Value::Object(m)) => m,
        Some(other) => return Err(bad(format!("data must be an object, found {}", super::json_kind(other)))),
        None => return Err(bad("data is missing")),
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
    if let Some(t) = opt_str(f.object_type, "ObjectType")? {
        if !t.eq_ignore_ascii_case("Key") {
            return Err(bad(format!("data.ObjectType is {t:?} but a key event must be about a Key")));
        }
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
    let key_id = if key_id.is_versionless() { key_id.with_version(&version) } else { key_id };
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

/// A `ResourceWriteSuccess` whose operation is a registry write, or `None` for other writes.
fn registry_write(data: Option<&Value>) -> Result<Option<RegistryWrite>, DecodeError> {
    let map = match data {
        Some(Value::Object(m)) => m,
        Some(other) => return Err(bad(format!("data must be an object, found {}", super::json_kind(other)))),
        None => return Err(bad("data is missing")),
    };
    let op = match map.get("operationName") {
        Some(Value::String(s)) => s.trim(),
        Some(other) => {
            return Err(bad(format!("data.operationName must be a string, found {}", super::json_kind(other))));
        }
        None => return Err(bad("data.operationName is missing")),
    };
    if !op.eq_ignore_ascii_case(REGISTRY_WRITE_OPERATION) {
        return Ok(None);
    }
    let uri = match map.get("resourceUri") {
        Some(Value::String(s)) => s.trim(),
        Some(other) => {
            return Err(bad(format!("data.resourceUri must be a string, found {}", super::json_kind(other))));
        }
        None => return Err(bad("data.resourceUri is missing")),
    };
    let registry = ResourceId::parse_typed(uri, REGISTRY_TYPE).map_err(|e| bad(format!("data.resourceUri: {e}")))?;
    let str_field =
        |v: Option<&Value>| v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
    let claims = map.get("claims");
    let caller = str_field(claims.and_then(|c| c.get("appid")))
        .or_else(|| str_field(claims.and_then(|c| c.get("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"))));
    Ok(Some(RegistryWrite { registry, correlation_id: str_field(map.get("correlationId")), caller }))
}
