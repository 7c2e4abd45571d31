//! `rotate-registry-key` and `rotate-vault-key`.
//!
//! A registry rotation is refused unless its **preflight** holds (the target key is
//! enabled, not expired, RSA or RSA-HSM, its vault has soft delete and purge protection,
//! the registry has its key identity), does nothing when the registry already points at
//! the desired key (this is what ends the loop when cmkguard's own PATCH comes back as a
//! `ResourceWriteSuccess`), holds the registry's lease in the ledger while it changes it,
//! leaves a registry that is `Updating` alone, and parks an ARM operation that outlasts
//! the invocation as pending in the ledger ([`finish_pending`] completes it later).

use chrono::Utc;
use cmkguard_azure::arm::{
    OperationStatus, PendingOperation as ArmPending, PollKind, RotateOutcome, RotateRequest, RotateStart,
};
use cmkguard_azure::{AzureError, Budget};
use cmkguard_ledger::{PendingOperation, PollKind as LedgerPollKind};
use cmkguard_model::{Event, KeyFacts, KeyId, PolicyInput, RegistryFacts, ResourceId, RotateTarget};

use super::{ActStage, LEASE_TTL, Retry, outcome};
use crate::config::Mode;
use crate::pipeline::{ActionOutcome, ActionStatus};

const ROTATE_REGISTRY: &str = "rotate-registry-key";
const ROTATE_VAULT: &str = "rotate-vault-key";

/// Why a rotation is refused, or `None` when the preflight holds.
pub fn preflight(registry: &RegistryFacts, key: &KeyFacts, now: chrono::DateTime<Utc>) -> Option<String> {
    let mut why = Vec::new();
    if !key.enabled {
        why.push(format!("key {} is disabled", key.name));
    }
    if key.expires.is_some_and(|e| e <= now) {
        why.push(format!("key {} has expired", key.name));
    }
    if !matches!(key.key_type.to_ascii_uppercase().as_str(), "RSA" | "RSA-HSM") {
        why.push(format!("key {} is {}, not RSA or RSA-HSM", key.name, key.key_type));
    }
    if key.vault.soft_delete != Some(true) {
        why.push(format!("soft delete is not confirmed on {}", key.vault_uri));
    }
    if key.vault.purge_protection != Some(true) {
        why.push(format!("purge protection is not confirmed on {}", key.vault_uri));
    }
    if registry.identity.as_deref().is_none_or(str::is_empty) {
        why.push(format!("registry {} has no key identity", registry.name));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The key id a registry should point at, from the target and the key facts.
pub fn desired_key(target: &RotateTarget, registry: &RegistryFacts, key: &KeyFacts) -> Result<KeyId, String> {
    let current = KeyId::parse(&key.key_id).map_err(|e| format!("key id {:?} does not parse: {e}", key.key_id))?;
    let wanted = match target {
        RotateTarget::Versionless => current.versionless(),
        RotateTarget::LatestVersion => current.clone(),
        RotateTarget::KeyId(k) => KeyId::parse(k).map_err(|e| format!("target key id {k:?} does not parse: {e}"))?,
    };
    if !wanted.same_key(&current) {
        return Err(format!("target key {wanted} is not the key in the input ({})", current.versionless()));
    }
    if let Some(v) = wanted.version()
        && !v.eq_ignore_ascii_case(&key.version)
        && !matches!(target, RotateTarget::KeyId(_))
    {
        return Err(format!("version {v} is not the key's current version"));
    }
    if let Some(configured) = registry.key_identifier.as_deref().and_then(|k| KeyId::parse(k).ok())
        && !configured.same_key(&wanted)
    {
        return Err(format!(
            "registry {} uses another key ({}); cmkguard only moves a registry between versions of its own key",
            registry.name,
            configured.versionless()
        ));
    }
    Ok(wanted)
}

fn azure_step(e: AzureError, what: &str) -> Result<ActionOutcome, Retry> {
    if e.is_retryable() {
        Err(Retry(format!("{what}: {e}")))
    } else {
        Ok(outcome(what, "", ActionStatus::Failed, e.to_string()))
    }
}

/// The ledger's record of how to poll, from ARM's.
fn ledger_poll_kind(kind: PollKind) -> LedgerPollKind {
    match kind {
        PollKind::AsyncOperation => LedgerPollKind::AsyncOperation,
        PollKind::Location => LedgerPollKind::Location,
    }
}

/// The parked operation as the ARM client polls it.
fn arm_operation(op: &PendingOperation) -> ArmPending {
    let kind = match op.poll_kind {
        LedgerPollKind::AsyncOperation => PollKind::AsyncOperation,
        LedgerPollKind::Location => PollKind::Location,
    };
    ArmPending { registry: op.registry.clone(), status_url: op.operation_url.clone(), kind, not_before: Utc::now() }
}

/// `rotate-registry-key` for one registry of the input.
pub async fn registry(
    stage: &ActStage,
    event: &Event,
    input: &PolicyInput,
    registry_id: &str,
    target: &RotateTarget,
) -> Result<ActionOutcome, Retry> {
    let refuse = |detail: String| Ok(outcome(ROTATE_REGISTRY, registry_id, ActionStatus::Failed, detail));
    let Some(reg) = input.registries.iter().find(|r| r.id.eq_ignore_ascii_case(registry_id)) else {
        return refuse("refused: the registry is not in the policy's input".into());
    };
    let Some(key) = &input.key else {
        return refuse("refused: no key facts for this registry (nothing to rotate to)".into());
    };
    if !reg.encryption_enabled {
        return refuse(format!("refused: registry {} does not use a customer-managed key", reg.name));
    }
    let wanted = match desired_key(target, reg, key) {
        Ok(k) => k,
        Err(e) => return refuse(format!("refused: {e}")),
    };
    // Finish what an earlier event started on this registry before deciding anew. While
    // it runs, nothing else may change the registry: if it is heading where this event
    // wants, its pending state is this event's outcome; otherwise this event asks for a
    // redelivery and rotates once it has ended (recording the other rotation as this
    // event's outcome would drop this event's own change; found by the soak).
    if stage.mode == Mode::Enforce
        && let Some((step, op)) = resume_for(stage, reg).await?
    {
        if KeyId::parse(&op.target_key).is_ok_and(|k| k == wanted) {
            return Ok(step);
        }
        return Err(Retry(format!(
            "registry {} is still being rotated to {} (started by event {}); this event's rotation to {wanted} waits for it",
            reg.name, op.target_key, op.event_id
        )));
    }
    let configured = reg.key_identifier.as_deref().and_then(|k| KeyId::parse(k).ok());
    if configured.as_ref() == Some(&wanted) {
        return Ok(outcome(
            ROTATE_REGISTRY,
            registry_id,
            ActionStatus::Skipped,
            format!("nothing to do: already on {wanted}"),
        ));
    }
    if let Some(why) = preflight(reg, key, input.now) {
        return refuse(format!("preflight failed: {why}"));
    }
    let from = reg.key_identifier.as_deref().unwrap_or("none");
    if stage.mode == Mode::Monitor {
        return Ok(outcome(
            ROTATE_REGISTRY,
            registry_id,
            ActionStatus::WouldDo,
            format!("would rotate {} from {from} to {wanted}", reg.name),
        ));
    }
    if reg.provisioning_state.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("Updating")) {
        return Err(Retry(format!("registry {} is Updating; not changing it now", reg.name)));
    }
    let Some(azure) = &stage.azure else {
        return refuse("refused: no Azure clients configured".into());
    };
    let id = match ResourceId::parse(registry_id) {
        Ok(id) => id,
        Err(e) => return refuse(format!("refused: registry id does not parse: {e}")),
    };
    let lease = match stage.ledger.acquire_lease(registry_id, LEASE_TTL).await {
        Ok(Some(l)) => l,
        Ok(None) => return Err(Retry(format!("registry {} is being changed by another invocation", reg.name))),
        Err(e) => return Err(Retry(format!("lease: {e}"))),
    };
    // The rotation (PATCH and polling) stops while the lease still holds, leaving time to
    // park the operation; whatever ARM still runs after that is pending, not ours to poll.
    let budget = Budget::new(rotation_budget(stage.budget, &lease, Utc::now()));
    // The facts were read before the lease: meanwhile the key may have a newer version,
    // and another event may already have moved the registry onto it. "The key's current
    // version" means the current one now: never move a registry back to an older version
    // (found by the fault-injection soak).
    let step = match newer_version(azure, &wanted, key, &budget).await {
        Ok(Some(newer)) => Ok(outcome(
            ROTATE_REGISTRY,
            registry_id,
            ActionStatus::Skipped,
            format!(
                "not rotating {} to {wanted}: the key has a newer version ({newer}) since this event's facts were read; the event about it (or the sweep) moves the registry",
                reg.name
            ),
        )),
        Err(e) => azure_step(e, ROTATE_REGISTRY).map(|mut o| {
            o.target = registry_id.to_owned();
            o
        }),
        Ok(None) => {
            async {
            let req = RotateRequest { key_id: wanted.clone(), identity_client_id: None };
            // The operation is parked in the ledger as soon as ARM accepts it, and only then polled
            // (`finish_parked`): a handler killed while polling leaves it recorded, finished by the
            // next event on the registry or the sweep — never a registry left Updating that nobody
            // follows, nor a change without a record (found by the fault-injection soak).
            let result = match azure.arm.start_rotate_key(&id, &req, &budget).await {
                Ok(RotateStart::AlreadyCurrent(r)) => Ok(RotateOutcome::AlreadyCurrent(r)),
                Ok(RotateStart::Done(r)) => Ok(RotateOutcome::Succeeded(r)),
                Ok(RotateStart::Pending(op)) => Ok(RotateOutcome::Pending(op)),
                Err(e) => Err(e),
            };
            let step = match result {
                Ok(RotateOutcome::AlreadyCurrent(_)) => Ok(outcome(
                    ROTATE_REGISTRY,
                    registry_id,
                    ActionStatus::Skipped,
                    format!("nothing to do: already on {wanted}"),
                )),
                Ok(RotateOutcome::Succeeded(_)) => Ok(outcome(
                    ROTATE_REGISTRY,
                    registry_id,
                    ActionStatus::Done,
                    format!("rotated {} from {from} to {wanted}", reg.name),
                )),
                Ok(RotateOutcome::Failed { code, message } | RotateOutcome::Canceled { code, message }) => Ok(outcome(
                    ROTATE_REGISTRY,
                    registry_id,
                    ActionStatus::Failed,
                    format!("ARM operation ended {}: {message}", code.unwrap_or_else(|| "without a code".into())),
                )),
                Ok(RotateOutcome::Pending(op)) => {
                    let pending = PendingOperation {
                        id: uuid::Uuid::new_v4().to_string(),
                        registry: registry_id.to_owned(),
                        action: ROTATE_REGISTRY.to_owned(),
                        operation_url: op.status_url.clone(),
                        poll_kind: ledger_poll_kind(op.kind),
                        started_at: Utc::now(),
                        target_key: wanted.to_string(),
                        event_id: event.id.clone(),
                    };
                    match stage.ledger.add_pending(&pending).await {
                        Ok(()) => Ok(outcome(
                            ROTATE_REGISTRY,
                            registry_id,
                            ActionStatus::Pending,
                            format!(
                                "rotation of {} to {wanted} started; still running, finished by the sweep or the next event",
                                reg.name
                            ),
                        )),
                        Err(e) => Err(Retry(format!("recording the pending rotation: {e}"))),
                    }
                }
                Err(e) => azure_step(e, ROTATE_REGISTRY).map(|mut o| {
                    o.target = registry_id.to_owned();
                    o
                }),
            };
            match step {
                Ok(parked) if parked.status == ActionStatus::Pending => {
                    let done = format!("rotated {} from {from} to {wanted}", reg.name);
                    Ok(finish_parked(stage, registry_id, &event.id, &budget, parked, done).await)
                }
                other => other,
            }
            }
            .await
        }
    };
    if let Err(e) = stage.ledger.release_lease(&lease).await {
        tracing::warn!(registry = %registry_id, error = %e, "could not release the registry lease; it lapses by itself");
    }
    step
}

/// When `wanted` pins the version the event's facts called current: the key's current
/// version now, if it is another one (a newer version appeared since the facts were read).
async fn newer_version(
    azure: &cmkguard_azure::AzureClients,
    wanted: &KeyId,
    key: &KeyFacts,
    budget: &Budget,
) -> Result<Option<KeyId>, AzureError> {
    if !wanted.version().is_some_and(|v| v.eq_ignore_ascii_case(&key.version)) {
        return Ok(None);
    }
    let now = azure.keyvault.get_key(&wanted.versionless(), budget).await?;
    let current = KeyId::parse(&now.key.kid)
        .map_err(|e| AzureError::Invalid(format!("Key Vault answered a key id that does not parse: {e}")))?;
    Ok(current.version().filter(|v| !v.eq_ignore_ascii_case(&key.version)).map(|_| current.clone()))
}

/// Time kept back at the end of a registry lease for recording the outcome.
pub const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a rotation may spend on Azure under `lease`: the invocation's budget, but
/// never past the lease's expiry less [`LEASE_MARGIN`], so no other holder can take the
/// registry while this one is still changing it (a longer operation is parked as pending).
pub fn rotation_budget(
    budget: std::time::Duration,
    lease: &cmkguard_ledger::Lease,
    now: chrono::DateTime<Utc>,
) -> std::time::Duration {
    let left = (lease.expires_at - now).to_std().unwrap_or_default().saturating_sub(LEASE_MARGIN);
    budget.min(left)
}

/// Polls this registry's pending rotation (if any) once. `Some((step, op))` when one is
/// still running (nothing else may change the registry now); `None` when none is pending.
async fn resume_for(stage: &ActStage, reg: &RegistryFacts) -> Result<Option<(ActionOutcome, PendingOperation)>, Retry> {
    let pending = stage.ledger.list_pending(Some(&reg.id)).await.map_err(|e| Retry(format!("ledger: {e}")))?;
    for op in pending {
        if let Some(step) = poll_pending(stage, &op).await? {
            return Ok(Some((step, op)));
        }
    }
    Ok(None)
}

/// One poll of a parked rotation. Removes it when it ended; `Some(Pending)` while it runs.
async fn poll_pending(stage: &ActStage, op: &PendingOperation) -> Result<Option<ActionOutcome>, Retry> {
    let Some(azure) = &stage.azure else { return Ok(None) };
    let arm_op = arm_operation(op);
    let budget = Budget::new(stage.budget);
    let status = match azure.arm.poll_operation(&arm_op, &budget).await {
        Ok(s) => s,
        Err(e) => return Err(Retry(format!("polling the rotation of {}: {e}", op.registry))),
    };
    let done = |o: ActionOutcome| async move {
        stage.ledger.complete_pending(&op.id).await.map_err(|e| Retry(format!("ledger: {e}")))?;
        tracing::info!(registry = %op.registry, status = ?o.status, "pending rotation finished");
        Ok::<_, Retry>(None)
    };
    match status {
        OperationStatus::Running { .. } | OperationStatus::Unknown { .. } => Ok(Some(outcome(
            ROTATE_REGISTRY,
            &op.registry,
            ActionStatus::Pending,
            format!("rotation to {} (started by event {}) is still running", op.target_key, op.event_id),
        ))),
        OperationStatus::Succeeded => done(outcome(ROTATE_REGISTRY, &op.registry, ActionStatus::Done, "")).await,
        OperationStatus::Failed { message, .. } | OperationStatus::Canceled { message, .. } => {
            tracing::warn!(registry = %op.registry, %message, "pending rotation ended without success");
            done(outcome(ROTATE_REGISTRY, &op.registry, ActionStatus::Failed, message)).await
        }
    }
}

/// Polls the rotation this event just parked until it ends or the budget runs out. Ended:
/// removed from the ledger, and the outcome says how it ended (`done` is the detail of a
/// success). Still running (or unreachable): `parked`, the pending outcome, as it is.
async fn finish_parked(
    stage: &ActStage,
    registry_id: &str,
    event_id: &str,
    budget: &Budget,
    parked: ActionOutcome,
    done: String,
) -> ActionOutcome {
    let Some(azure) = &stage.azure else { return parked };
    let Ok(ops) = stage.ledger.list_pending(Some(registry_id)).await else { return parked };
    let Some(op) = ops.into_iter().filter(|o| o.event_id == event_id).max_by_key(|o| o.started_at) else {
        return parked;
    };
    let mut arm_op = arm_operation(&op);
    let ended = loop {
        let wait = (arm_op.not_before - Utc::now()).to_std().unwrap_or_default();
        if wait >= budget.remaining() {
            return parked;
        }
        tokio::time::sleep(wait).await;
        let again = match azure.arm.poll_operation(&arm_op, budget).await {
            Ok(OperationStatus::Succeeded) => break outcome(ROTATE_REGISTRY, registry_id, ActionStatus::Done, done),
            Ok(OperationStatus::Failed { code, message } | OperationStatus::Canceled { code, message }) => {
                let code = code.unwrap_or_else(|| "without a code".into());
                let detail = format!("ARM operation ended {code}: {message}");
                break outcome(ROTATE_REGISTRY, registry_id, ActionStatus::Failed, detail);
            }
            Ok(OperationStatus::Running { retry_after }) => retry_after,
            Ok(OperationStatus::Unknown { .. }) | Err(_) => std::time::Duration::from_secs(1),
        };
        if budget.is_exhausted() {
            return parked;
        }
        arm_op.not_before = Utc::now() + chrono::Duration::from_std(again).unwrap_or_default();
    };
    if let Err(e) = stage.ledger.complete_pending(&op.id).await {
        // It stays parked; the next poll finds it ended and removes it.
        tracing::warn!(registry = %registry_id, error = %e, "could not remove a finished rotation from the ledger");
    }
    ended
}

/// What the sweep reports about parked rotations.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PendingStats {
    pub finished: usize,
    pub still_running: usize,
    pub errors: usize,
}

/// Polls every parked rotation once; finished ones are removed from the ledger.
pub async fn finish_pending(stage: &ActStage) -> PendingStats {
    let mut stats = PendingStats::default();
    let ops = match stage.ledger.list_pending(None).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list pending rotations");
            stats.errors += 1;
            return stats;
        }
    };
    for op in ops {
        match poll_pending(stage, &op).await {
            Ok(Some(_)) => stats.still_running += 1,
            Ok(None) => stats.finished += 1,
            Err(Retry(m)) => {
                tracing::warn!(registry = %op.registry, error = %m, "pending rotation not polled");
                stats.errors += 1;
            }
        }
    }
    stats
}

/// `rotate-vault-key`: a new version of the input's key, only when the operator allowed
/// it and the key has no rotation policy of its own. Lists every known dependent.
pub async fn vault(stage: &ActStage, input: &PolicyInput, key_id: &str) -> Result<ActionOutcome, Retry> {
    let refuse = |status: ActionStatus, detail: String| Ok(outcome(ROTATE_VAULT, key_id, status, detail));
    let Some(key) = &input.key else {
        return refuse(ActionStatus::Failed, "refused: no key facts in the input".into());
    };
    let (Ok(asked), Ok(known)) = (KeyId::parse(key_id), KeyId::parse(&key.key_id)) else {
        return refuse(ActionStatus::Failed, format!("refused: key id {key_id:?} does not parse"));
    };
    if !asked.same_key(&known) {
        return refuse(ActionStatus::Failed, "refused: the key is not the one in the policy's input".into());
    }
    let dependents: Vec<&str> = input.registries.iter().map(|r| r.id.as_str()).collect();
    let deps = if dependents.is_empty() { "none known".to_owned() } else { dependents.join(", ") };
    if !stage.enable_vault_key_rotation {
        return refuse(
            ActionStatus::Skipped,
            format!("vault key rotation is not enabled (CMKGUARD_ENABLE_VAULT_KEY_ROTATION); dependents: {deps}"),
        );
    }
    if key.has_rotation_policy {
        return refuse(
            ActionStatus::Skipped,
            format!("key {} rotates by its own policy; dependents: {deps}", key.name),
        );
    }
    if stage.mode == Mode::Monitor {
        return refuse(
            ActionStatus::WouldDo,
            format!("would create a new version of {}; dependents: {deps}", key.name),
        );
    }
    let Some(azure) = &stage.azure else {
        return refuse(ActionStatus::Failed, "refused: no Azure clients configured".into());
    };
    let budget = Budget::new(stage.budget);
    match azure.keyvault.rotate_key(&asked.versionless(), &budget).await {
        Ok(bundle) => refuse(ActionStatus::Done, format!("new version {}; dependents: {deps}", bundle.key.kid)),
        Err(e) if e.is_retryable() => Err(Retry(format!("{ROTATE_VAULT}: {e}"))),
        Err(e) => refuse(ActionStatus::Failed, format!("{e}; dependents: {deps}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lease(secs_left: i64, now: chrono::DateTime<Utc>) -> cmkguard_ledger::Lease {
        cmkguard_ledger::Lease {
            registry: "r".into(),
            lease_id: "l".into(),
            expires_at: now + chrono::Duration::seconds(secs_left),
        }
    }

    #[test]
    fn a_rotation_never_outlasts_its_registry_lease() {
        let now = Utc::now();
        let ttl = super::super::LEASE_TTL.as_secs() as i64;
        // A long invocation budget is cut to the lease less the margin.
        assert_eq!(
            rotation_budget(Duration::from_secs(600), &lease(ttl, now), now),
            super::super::LEASE_TTL - LEASE_MARGIN
        );
        // A short one is kept.
        assert_eq!(rotation_budget(Duration::from_secs(5), &lease(ttl, now), now), Duration::from_secs(5));
        // A lease nearly or already gone leaves nothing: the rotation is not started.
        assert_eq!(rotation_budget(Duration::from_secs(600), &lease(10, now), now), Duration::ZERO);
        assert_eq!(rotation_budget(Duration::from_secs(600), &lease(-5, now), now), Duration::ZERO);
    }
}
