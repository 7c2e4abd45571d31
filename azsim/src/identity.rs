//! The managed-identity token endpoint on its own plain-HTTP loopback listener: App
//! Service's `/msi/token` (api 2019-08-01, `X-IDENTITY-HEADER`) and the IMDS shape
//! (`/metadata/identity/oauth2/token`, `Metadata: true`).

use serde_json::json;

use crate::faults::Route;
use crate::http::{Ctx, Flavor, Reply, Settings, fault_reply, json_resp};
use crate::world::{ARM_HOST, Audience, VAULT_SUFFIX, World};

fn err(status: u16, code: &str, desc: &str) -> Reply {
    json_resp(status, &json!({"error": code, "error_description": desc})).into()
}

/// Which audience a `resource` names (scheme + host; a port or trailing slash is ignored).
pub fn audience_of(resource: &str) -> Option<Audience> {
    let r = resource.trim().trim_end_matches("/.default");
    let url = url::Url::parse(r).ok()?;
    if url.scheme() != "https" {
        return None;
    }
    match url.host_str()?.to_ascii_lowercase().as_str() {
        h if h == ARM_HOST => Some(Audience::Arm),
        h if h == VAULT_SUFFIX => Some(Audience::Vault),
        _ => None,
    }
}

pub fn handle(w: &mut World, s: &Settings, ctx: &Ctx) -> Reply {
    let path = ctx.path.to_ascii_lowercase();
    let app_service = path == "/msi/token";
    let imds = path == "/metadata/identity/oauth2/token";
    if ctx.method != http::Method::GET || !(app_service || imds) {
        return err(
            404,
            "not_found",
            "azsim's identity listener serves GET /msi/token and GET /metadata/identity/oauth2/token.",
        );
    }
    if app_service {
        // Constant-time enough for a test double; the header is a random per-run secret.
        if ctx.header("x-identity-header") != Some(s.identity_header.as_str()) {
            return err(401, "unauthorized", "X-IDENTITY-HEADER is missing or wrong.");
        }
        if ctx.q("api-version") != Some("2019-08-01") {
            return err(400, "invalid_request", "api-version must be 2019-08-01.");
        }
    } else {
        if ctx.header("metadata").is_none_or(|v| !v.eq_ignore_ascii_case("true")) {
            return err(400, "invalid_request", "Required metadata header not specified");
        }
        if ctx.q("api-version").is_none() {
            return err(400, "invalid_request", "api-version is required.");
        }
    }
    if let Some(r) = fault_reply(w, Route::Identity, Flavor::Identity) {
        return r;
    }
    let Some(resource) = ctx.q("resource").map(str::to_owned) else {
        return err(400, "invalid_request", "The resource query parameter is required.");
    };
    let Some(aud) = audience_of(&resource) else {
        return err(
            400,
            "invalid_resource",
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant (azsim knows https://{ARM_HOST} and https://{VAULT_SUFFIX})."
            ),
        );
    };
    let res_id = ctx.q("mi_res_id").or_else(|| ctx.q("msi_res_id"));
    let principal = ctx.q("principal_id").or_else(|| ctx.q("object_id"));
    let Some(identity) = w.find_identity(ctx.q("client_id"), principal, res_id) else {
        return err(
            400,
            "invalid_request",
            "No user-assigned identity matches the given client_id, principal_id/object_id or mi_res_id.",
        );
    };
    let (token, expires) = w.issue_token(aud, &identity.client_id, s.token_lifetime);
    let expires_on = expires.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut body = json!({
        "access_token": token,
        "expires_on": expires_on.to_string(),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": identity.client_id,
    });
    if imds {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        body["expires_in"] = json!(s.token_lifetime.as_secs().to_string());
        body["ext_expires_in"] = json!(s.token_lifetime.as_secs().to_string());
        body["not_before"] = json!(now.to_string());
    }
    json_resp(200, &body).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences() {
        assert_eq!(audience_of("https://management.azsim.test/"), Some(Audience::Arm));
        assert_eq!(audience_of("https://management.azsim.test:8443"), Some(Audience::Arm));
        assert_eq!(audience_of("https://vault.azsim.test/.default"), Some(Audience::Vault));
        assert_eq!(audience_of("https://vault.azure.net"), None);
        assert_eq!(audience_of("http://vault.azsim.test"), None);
    }
}
