//! Routes (the names tests use to count calls and inject faults) and the fault rules:
//! fail the next N calls with a status, drop the connection, add latency.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Every operation azsim serves, by a stable dotted name (`Route::as_str`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Route {
    /// Matches every route (fault rules only).
    Any,
    Identity,
    ArmRegistryGet,
    ArmRegistryList,
    ArmRegistryPut,
    ArmRegistryPatch,
    ArmOperationStatus,
    ArmVaultGet,
    ResourceGraph,
    KvGetKey,
    KvListKeys,
    KvKeyVersions,
    KvUpdateKey,
    KvRotateKey,
    KvGetRotationPolicy,
    KvSetRotationPolicy,
    Control,
    NotFound,
}

const ALL: &[(Route, &str)] = &[
    (Route::Any, "any"),
    (Route::Identity, "identity.token"),
    (Route::ArmRegistryGet, "arm.registry.get"),
    (Route::ArmRegistryList, "arm.registry.list"),
    (Route::ArmRegistryPut, "arm.registry.put"),
    (Route::ArmRegistryPatch, "arm.registry.patch"),
    (Route::ArmOperationStatus, "arm.operation.get"),
    (Route::ArmVaultGet, "arm.vault.get"),
    (Route::ResourceGraph, "arm.resourcegraph.query"),
    (Route::KvGetKey, "kv.key.get"),
    (Route::KvListKeys, "kv.key.list"),
    (Route::KvKeyVersions, "kv.key.versions"),
    (Route::KvUpdateKey, "kv.key.update"),
    (Route::KvRotateKey, "kv.key.rotate"),
    (Route::KvGetRotationPolicy, "kv.rotationpolicy.get"),
    (Route::KvSetRotationPolicy, "kv.rotationpolicy.put"),
    (Route::Control, "control"),
    (Route::NotFound, "notfound"),
];

impl Route {
    pub fn as_str(self) -> &'static str {
        ALL.iter().find(|(r, _)| *r == self).map(|(_, s)| *s).unwrap_or("any")
    }
    /// All route names, for error messages and docs.
    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|(_, s)| *s).collect()
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s.trim()))
            .map(|(r, _)| *r)
            .ok_or_else(|| format!("unknown route {s:?}; known: {}", Route::names().join(", ")))
    }
}

impl From<Route> for &'static str {
    fn from(r: Route) -> Self {
        r.as_str()
    }
}

impl TryFrom<String> for Route {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// What an injected fault does to a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status (429/500/503 …) and optional `Retry-After` seconds.
    Status { status: u16, retry_after: Option<u64> },
    /// Close the connection without answering.
    Drop,
}

#[derive(Clone, Debug)]
struct Rule {
    route: Route,
    remaining: u32,
    kind: FaultKind,
}

/// Active fault rules and latencies.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    rules: Vec<Rule>,
    latency: HashMap<Route, Duration>,
}

impl Faults {
    /// Fail the next `count` calls of `route` with `kind` (rules apply in the order added).
    pub fn add(&mut self, route: Route, count: u32, kind: FaultKind) {
        if count > 0 {
            self.rules.push(Rule { route, remaining: count, kind });
        }
    }

    pub fn set_latency(&mut self, route: Route, d: Duration) {
        if d.is_zero() {
            self.latency.remove(&route);
        } else {
            self.latency.insert(route, d);
        }
    }

    pub fn latency(&self, route: Route) -> Duration {
        self.latency.get(&route).or_else(|| self.latency.get(&Route::Any)).copied().unwrap_or_default()
    }

    pub fn clear(&mut self) {
        self.rules.clear();
        self.latency.clear();
    }

    /// Consume one matching fault, if any.
    pub fn take(&mut self, route: Route) -> Option<FaultKind> {
        let i = self.rules.iter().position(|r| r.route == route || r.route == Route::Any)?;
        let rule = &mut self.rules[i];
        rule.remaining -= 1;
        let kind = rule.kind.clone();
        if rule.remaining == 0 {
            self.rules.remove(i);
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_round_trip() {
        for name in Route::names() {
            assert_eq!(name.parse::<Route>().unwrap().as_str(), name);
        }
        assert!("arm.nope".parse::<Route>().unwrap_err().contains("arm.registry.get"));
    }

    #[test]
    fn faults_are_consumed_in_order() {
        let mut f = Faults::default();
        f.add(Route::KvGetKey, 2, FaultKind::Status { status: 429, retry_after: Some(1) });
        f.add(Route::Any, 1, FaultKind::Drop);
        assert!(matches!(f.take(Route::KvGetKey), Some(FaultKind::Status { status: 429, .. })));
        assert!(matches!(f.take(Route::KvGetKey), Some(FaultKind::Status { status: 429, .. })));
        assert_eq!(f.take(Route::KvGetKey), Some(FaultKind::Drop));
        assert_eq!(f.take(Route::KvGetKey), None);
    }
}
