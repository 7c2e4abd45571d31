//! The Key Vault data plane (`<vault>.vault.azsim.test`): keys, versions with nextLink
//! paging, rotate, update, rotation policy — behind the 401 challenge real vaults send.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::faults::Route;
use crate::http::{Ctx, Flavor, Reply, Settings, authorize, fault_reply, json_resp, kv_error};
use crate::world::{Audience, World};

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

pub fn route_of(ctx: &Ctx) -> Route {
    let segs = ctx.segs();
    let m = &ctx.method;
    let get = m == http::Method::GET;
    match segs.as_slice() {
        [k] if eq(k, "keys") && get => Route::KvListKeys,
        [k, _] if eq(k, "keys") && get => Route::KvGetKey,
        [k, _, v] if eq(k, "keys") && eq(v, "versions") && get => Route::KvKeyVersions,
        [k, _, r] if eq(k, "keys") && eq(r, "rotate") && m == http::Method::POST => Route::KvRotateKey,
        [k, _, r] if eq(k, "keys") && eq(r, "rotationpolicy") && get => Route::KvGetRotationPolicy,
        [k, _, r] if eq(k, "keys") && eq(r, "rotationpolicy") && m == http::Method::PUT => Route::KvSetRotationPolicy,
        [k, _, _] if eq(k, "keys") && get => Route::KvGetKey,
        [k, _, _] if eq(k, "keys") && m == http::Method::PATCH => Route::KvUpdateKey,
        _ => Route::NotFound,
    }
}

fn key_not_found(name: &str) -> http::Response<crate::http::Body> {
    kv_error(
        404,
        "KeyNotFound",
        &format!(
            "A key with (name/id) {name} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command."
        ),
    )
}

pub fn handle(w: &mut World, s: &Settings, ctx: &Ctx, route: Route, vault_host: &str) -> Reply {
    // Real vaults answer every call without a valid token with the challenge first.
    if let Err(r) = authorize(w, ctx, Audience::Vault) {
        return r;
    }
    let vault_lc = vault_host.to_ascii_lowercase();
    if !w.vaults.contains_key(&vault_lc) {
        return kv_error(404, "VaultNotFound", &format!("azsim has no vault named '{vault_host}'.")).into();
    }
    if let Some(r) = fault_reply(w, route, Flavor::Kv) {
        return r;
    }
    let Some(api) = ctx.q("api-version").map(str::to_owned) else {
        return kv_error(400, "BadParameter", "The request URI contains an invalid or missing api-version.").into();
    };
    let segs = ctx.segs();
    let name = segs.get(1).copied().unwrap_or_default();
    let key_lc = name.to_ascii_lowercase();
    if route == Route::NotFound {
        return kv_error(404, "NotFound", &format!("azsim's Key Vault serves no {} {}.", ctx.method, ctx.path)).into();
    }
    if route == Route::KvListKeys {
        return list_keys(w, s, ctx, &vault_lc, &api).into();
    }
    let Some(key) = w.vaults[&vault_lc].keys.get(&key_lc).cloned() else {
        return key_not_found(name).into();
    };
    let vault = w.vaults[&vault_lc].clone();
    match route {
        Route::KvGetKey => {
            let version = segs.get(2).copied().unwrap_or("");
            let v = if version.is_empty() {
                key.versions.last()
            } else {
                key.versions.iter().find(|v| eq(&v.id, version))
            };
            match v {
                Some(v) => json_resp(200, &w.key_bundle(&vault, &key, v)),
                None => key_not_found(&format!("{name}/{version}")),
            }
        }
        Route::KvKeyVersions => versions(w, s, ctx, &vault, &key, &api),
        Route::KvRotateKey => match w.rotate_key(&vault_lc, &key_lc) {
            Some(id) => {
                let key = &w.vaults[&vault_lc].keys[&key_lc];
                let v = key.versions.iter().find(|v| v.id == id).cloned();
                match v {
                    Some(v) => json_resp(200, &w.key_bundle(&vault, key, &v)),
                    None => key_not_found(name),
                }
            }
            None => key_not_found(name),
        },
        Route::KvGetRotationPolicy => json_resp(200, &rotation_policy(w, &vault.name, &key)),
        Route::KvSetRotationPolicy => {
            let body = match ctx.json() {
                Ok(b) => b,
                Err(r) => return r.into(),
            };
            if !body["lifetimeActions"].is_array() && !body["lifetimeActions"].is_null() {
                return kv_error(400, "BadParameter", "lifetimeActions must be an array.").into();
            }
            let now = w.now().timestamp();
            let created = key.rotation_policy.as_ref().and_then(|p| p["attributes"]["created"].as_i64()).unwrap_or(now);
            let mut attrs = json!({"created": created, "updated": now});
            if let Some(e) = body["attributes"]["expiryTime"].as_str() {
                if crate::world::iso_duration_secs(e).is_none() {
                    return kv_error(400, "BadParameter", &format!("attributes.expiryTime '{e}' is not an ISO-8601 duration.")).into();
                }
                attrs["expiryTime"] = json!(e);
            }
            let policy = json!({"lifetimeActions": body["lifetimeActions"].as_array().cloned().unwrap_or_default(), "attributes": attrs});
            if let Some(k) = w.vaults.get_mut(&vault_lc).and_then(|v| v.keys.get_mut(&key_lc)) {
                k.rotation_policy = Some(policy);
            }
            let key = w.vaults[&vault_lc].keys[&key_lc].clone();
            json_resp(200, &rotation_policy(w, &vault.name, &key))
        }
        Route::KvUpdateKey => update_key(w, ctx, &vault_lc, &key_lc, segs.get(2).copied().unwrap_or("")),
        _ => kv_error(404, "NotFound", "Not found."),
    }
    .into()
}

fn rotation_policy(w: &World, vault: &str, key: &crate::world::KeyState) -> Value {
    let id = format!("https://{vault}.{}:{}/keys/{}/rotationpolicy", crate::world::VAULT_SUFFIX, w.urls.port, key.name);
    match &key.rotation_policy {
        Some(p) => json!({"id": id, "lifetimeActions": p["lifetimeActions"], "attributes": p["attributes"]}),
        // A key without a policy reports Key Vault's default: notify 30 days before expiry.
        None => json!({
            "id": id,
            "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}],
            "attributes": {},
        }),
    }
}

fn page_params(s: &Settings, ctx: &Ctx) -> Result<(usize, usize), http::Response<crate::http::Body>> {
    let size = match ctx.q("maxresults") {
        Some(m) => match m.parse::<usize>() {
            Ok(n) if (1..=25).contains(&n) => n,
            _ => return Err(kv_error(400, "BadParameter", "maxresults must be between 1 and 25.")),
        },
        None => s.kv_page_size.clamp(1, 25),
    };
    let skip = match ctx.q("$skiptoken") {
        Some(t) => URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("skip:").and_then(|n| n.parse().ok()))
            .ok_or_else(|| kv_error(400, "BadParameter", "The $skiptoken is invalid."))?,
        None => 0,
    };
    Ok((size, skip))
}

fn next_link(base: &str, api: &str, skip: usize, size: usize, explicit_size: bool) -> String {
    let tok = URL_SAFE_NO_PAD.encode(format!("skip:{skip}"));
    let mut l = format!("{base}?api-version={api}&$skiptoken={tok}");
    if explicit_size {
        l.push_str(&format!("&maxresults={size}"));
    }
    l
}

fn versions(
    w: &World,
    s: &Settings,
    ctx: &Ctx,
    vault: &crate::world::VaultState,
    key: &crate::world::KeyState,
    api: &str,
) -> http::Response<crate::http::Body> {
    let (size, skip) = match page_params(s, ctx) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let items: Vec<Value> = key
        .versions
        .iter()
        .skip(skip)
        .take(size)
        .map(|v| {
            let mut item = json!({
                "kid": w.urls.kid(&vault.name, &key.name, Some(&v.id)),
                "attributes": w.key_attributes(vault, v),
            });
            if !key.tags.is_empty() {
                item["tags"] = json!(key.tags);
            }
            item
        })
        .collect();
    let mut body = json!({"value": items, "nextLink": null});
    if skip + size < key.versions.len() {
        let base =
            format!("https://{}.{}:{}/keys/{}/versions", vault.name, crate::world::VAULT_SUFFIX, w.urls.port, key.name);
        body["nextLink"] = json!(next_link(&base, api, skip + size, size, ctx.q("maxresults").is_some()));
    }
    json_resp(200, &body)
}

fn list_keys(w: &World, s: &Settings, ctx: &Ctx, vault_lc: &str, api: &str) -> http::Response<crate::http::Body> {
    let (size, skip) = match page_params(s, ctx) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let vault = &w.vaults[vault_lc];
    let items: Vec<Value> = vault
        .keys
        .values()
        .skip(skip)
        .take(size)
        .filter_map(|k| {
            let cur = k.versions.last()?;
            let mut item =
                json!({"kid": w.urls.kid(&vault.name, &k.name, None), "attributes": w.key_attributes(vault, cur)});
            if !k.tags.is_empty() {
                item["tags"] = json!(k.tags);
            }
            Some(item)
        })
        .collect();
    let mut body = json!({"value": items, "nextLink": null});
    if skip + size < vault.keys.len() {
        let base = format!("https://{}.{}:{}/keys", vault.name, crate::world::VAULT_SUFFIX, w.urls.port);
        body["nextLink"] = json!(next_link(&base, api, skip + size, size, ctx.q("maxresults").is_some()));
    }
    json_resp(200, &body)
}

fn update_key(
    w: &mut World,
    ctx: &Ctx,
    vault_lc: &str,
    key_lc: &str,
    version: &str,
) -> http::Response<crate::http::Body> {
    let body = match ctx.json() {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now = w.now().timestamp();
    let Some(key) = w.vaults.get_mut(vault_lc).and_then(|v| v.keys.get_mut(key_lc)) else {
        return key_not_found(key_lc);
    };
    let idx = if version.is_empty() {
        key.versions.len().checked_sub(1)
    } else {
        key.versions.iter().position(|v| eq(&v.id, version))
    };
    let Some(idx) = idx else {
        return key_not_found(&format!("{key_lc}/{version}"));
    };
    let a = &body["attributes"];
    let v = &mut key.versions[idx];
    if let Some(e) = a["enabled"].as_bool() {
        v.enabled = e;
    }
    for (field, slot) in [("exp", &mut v.exp), ("nbf", &mut v.nbf)] {
        match &a[field] {
            Value::Null => {}
            x => match x.as_i64() {
                Some(t) => *slot = Some(t),
                None => return kv_error(400, "BadParameter", &format!("attributes.{field} must be Unix seconds.")),
            },
        }
    }
    v.updated = now;
    if let Some(tags) = body["tags"].as_object() {
        key.tags = tags.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect();
    }
    let (vault, key) = (w.vaults[vault_lc].clone(), w.vaults[vault_lc].keys[key_lc].clone());
    json_resp(200, &w.key_bundle(&vault, &key, &key.versions[idx]))
}
