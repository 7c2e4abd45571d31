//! The act stage: a decision → its effects, exactly once per event.
//!
//! [`ActStage`] implements [`crate::pipeline::Act`]:
//!
//! 1. **Claim** the event id in the ledger before anything else. A redelivered event that
//!    was handled gets its recorded outcome back and nothing is repeated; one that another
//!    invocation is handling is answered retryable; one whose earlier attempt stopped
//!    half-way resumes from its checkpoint (steps recorded as done or pending are not
//!    repeated). An event whose decision has **no side effect** (no notification that
//!    could be sent, and rotations only as monitor-mode "would do") is the exception: its
//!    outcome is worked out first and the claim and the final record are one durable
//!    write (`Ledger::claim_or_record`); a known id is answered exactly as above.
//! 2. A **policy error** never leads to remediation: it is recorded and alerted.
//! 3. Otherwise every action runs in order: registry and vault rotations first
//!    ([`rotate`]), then notifications ([`notify`]) so the message can say what was done.
//!    In `monitor` mode rotations are preflighted and recorded as "would do"; nothing in
//!    Azure changes.
//! 4. The final **audit record** ([`audit`]) is written, and only once it is durable is
//!    the event answered.
//!
//! Errors map onto the pipeline's classes: only throttling, Azure 5xx and an unavailable
//! ledger are retryable (Event Grid redelivers); everything else is recorded and answered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cmkguard_azure::AzureClients;
use cmkguard_ledger::{Claim, ClaimTicket, Ledger, LedgerError};
use cmkguard_model::{Action, Event, PolicyInput};
use cmkguard_notify::Notifier;

use crate::config::Mode;
use crate::pipeline::{Act, ActionOutcome, ActionStatus, Decided, ErrorClass, StageError};

pub mod audit;
pub mod notify;
pub mod rotate;

/// How long one attempt may hold an event's claim before another may take it over, unless
/// configured (`CMKGUARD_CLAIM_TTL_SECS`).
pub const CLAIM_TTL: Duration = Duration::from_secs(300);
/// How long a registry lease is held (renewed by nothing: a rotation start fits in it).
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// What the act stage needs; cheap to clone.
#[derive(Clone)]
pub struct ActStage {
    pub ledger: Arc<dyn Ledger>,
    /// Chat channels from configuration; `None` when none are configured.
    pub notifier: Option<Notifier>,
    /// Azure clients (shared with the enrich stage); `None`: rotations are refused.
    pub azure: Option<AzureClients>,
    pub mode: Mode,
    /// Notification dedupe window.
    pub dedupe_window: Duration,
    /// The operator allowed `rotate-vault-key`.
    pub enable_vault_key_rotation: bool,
    /// Time an invocation may spend on Azure calls (a rotation's LRO polling included).
    pub budget: Duration,
    /// How long an attempt holds an event's claim (a dead handler's claim lapses after it).
    pub claim_ttl: Duration,
}

impl std::fmt::Debug for ActStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActStage")
            .field("ledger", &self.ledger.backend())
            .field("channels", &self.notifier.as_ref().map(|n| n.channels().len()).unwrap_or(0))
            .field("azure", &self.azure.is_some())
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Ledger failures in the pipeline's terms.
pub fn ledger_error(e: &LedgerError) -> StageError {
    let class = if e.is_retryable() { ErrorClass::Retryable } else { ErrorClass::Terminal };
    StageError { stage: "act", class, message: format!("ledger: {e}") }
}

/// An outcome, briefly.
pub(crate) fn outcome(action: &str, target: &str, status: ActionStatus, detail: impl Into<String>) -> ActionOutcome {
    ActionOutcome { action: action.to_owned(), target: target.to_owned(), status, detail: detail.into() }
}

/// Whether an earlier attempt already finished (or started) this step.
fn already(progress: &[ActionOutcome], action: &str, target: &str) -> Option<ActionOutcome> {
    progress
        .iter()
        .find(|o| {
            o.action == action
                && o.target.eq_ignore_ascii_case(target)
                && matches!(o.status, ActionStatus::Done | ActionStatus::Pending | ActionStatus::WouldDo)
        })
        .cloned()
}

/// A step that failed in a way a redelivery can fix: stop, keep what is done, answer 5xx.
/// (The message names what failed.)
pub struct Retry(pub String);

impl ActStage {
    fn mode_str(&self) -> &'static str {
        self.mode.as_str()
    }

    /// Runs the decision with a held claim; returns the outcomes, or a retryable stop.
    async fn run(
        &self,
        event: &Event,
        input: &PolicyInput,
        decided: &Decided,
        ticket: &mut ClaimTicket,
    ) -> Result<Vec<ActionOutcome>, Retry> {
        let progress = ticket.progress.clone();
        let mut out: Vec<ActionOutcome> = Vec::new();
        let decision = match decided {
            Decided::PolicyError { policy, error } => {
                out.push(outcome(
                    "remediation",
                    &event.subject,
                    ActionStatus::Skipped,
                    "policy failed: no remediation (fail safe)",
                ));
                out.extend(notify::policy_alert(self, event, input, policy.as_ref(), error).await);
                return Ok(out);
            }
            Decided::Decision { decision, .. } => decision,
        };
        // Changes first, each checkpointed, so a crash between two never repeats one.
        for action in &decision.actions {
            let step = match action {
                Action::RotateRegistryKey { registry, target } => {
                    if let Some(done) = already(&progress, action.name(), registry) {
                        done
                    } else {
                        rotate::registry(self, event, input, registry, target).await?
                    }
                }
                Action::RotateVaultKey { key } => {
                    if let Some(done) = already(&progress, action.name(), key) {
                        done
                    } else {
                        rotate::vault(self, input, key).await?
                    }
                }
                Action::Audit | Action::Notify { .. } => continue,
            };
            let changed = matches!(step.status, ActionStatus::Done | ActionStatus::Pending);
            out.push(step);
            if changed {
                match self.ledger.checkpoint(ticket, &out, self.claim_ttl).await {
                    Ok(t) => *ticket = t,
                    Err(e) => return Err(Retry(format!("checkpoint: {e}"))),
                }
            }
        }
        // A redelivery decides afresh: a change an earlier attempt made may no longer be
        // asked for (the registry is now as desired). It happened all the same, so it
        // stays in the record (found by the fault-injection soak).
        for earlier in &progress {
            let changed = matches!(earlier.status, ActionStatus::Done | ActionStatus::Pending);
            if changed
                && !out.iter().any(|o| o.action == earlier.action && o.target.eq_ignore_ascii_case(&earlier.target))
            {
                let mut kept = earlier.clone();
                kept.detail = format!("{} (by an earlier attempt of this event)", kept.detail);
                out.push(kept);
            }
        }
        // The messages say what was changed; copied only when there is a message.
        if decision.actions.iter().any(|a| matches!(a, Action::Notify { .. })) {
            let changes = out.clone();
            for action in &decision.actions {
                if let Action::Notify { channel, severity, title, text } = action {
                    out.push(
                        notify::send(self, event, input, decision, &changes, channel, *severity, title, text).await,
                    );
                }
            }
        }
        if decision.actions.iter().any(|a| matches!(a, Action::Audit)) {
            out.push(outcome("audit", &event.id, ActionStatus::Done, "audit record written"));
        }
        Ok(out)
    }
}

#[async_trait]
impl Act for ActStage {
    async fn act(
        &self,
        event: &Event,
        input: &PolicyInput,
        decided: &Decided,
    ) -> Result<Vec<ActionOutcome>, StageError> {
        let claim = if self.without_side_effects(decided) {
            match self.record_at_once(event, input, decided).await? {
                Ok(actions) => return Ok(actions),
                Err(claim) => claim,
            }
        } else {
            self.ledger.claim(&event.id, self.claim_ttl).await.map_err(|e| ledger_error(&e))?
        };
        let mut ticket = match claim {
            Claim::AlreadyDone(record) => {
                tracing::info!(event_id = %event.id, "redelivery of a handled event: nothing repeated");
                return Ok(vec![outcome(
                    "redelivery",
                    &event.id,
                    ActionStatus::Skipped,
                    format!(
                        "already handled at {} ({} action outcome(s) recorded); nothing repeated",
                        record.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        record.actions.len()
                    ),
                )]);
            }
            Claim::InProgress { attempt, expires_at } => {
                return Err(StageError::retryable(
                    "act",
                    format!(
                        "event {} is being handled by another invocation (attempt {attempt}, until {expires_at})",
                        event.id
                    ),
                ));
            }
            Claim::New(ticket) => ticket,
        };
        if ticket.attempt > 1 {
            tracing::info!(event_id = %event.id, attempt = ticket.attempt, resumed = ticket.progress.len(), "resuming an interrupted event");
        }
        let actions = match self.run(event, input, decided, &mut ticket).await {
            Ok(a) => a,
            Err(Retry(message)) => {
                if let Err(e) = self.ledger.abandon(&ticket).await {
                    tracing::warn!(event_id = %event.id, error = %e, "could not give the claim up; it lapses by itself");
                }
                return Err(StageError::retryable("act", message));
            }
        };
        let record = audit::record(event, decided, actions, self.mode_str());
        self.ledger.complete(&ticket, &record).await.map_err(|e| ledger_error(&e))?;
        Ok(record.actions)
    }
}

impl ActStage {
    /// Whether carrying the decision out changes nothing outside the ledger: no
    /// notification that could be sent, no policy-error alert, and rotations only in
    /// `monitor` mode (recorded as "would do"). Such an event needs no claim before acting.
    /// A notification to a channel the configuration does not have (or with no channels
    /// at all) is refused and recorded without touching the ledger's dedupe table or the
    /// network ([`notify`]), so it does not count as a side effect.
    fn without_side_effects(&self, decided: &Decided) -> bool {
        let Decided::Decision { decision, .. } = decided else { return false };
        decision.actions.iter().all(|a| match a {
            Action::Audit => true,
            Action::RotateRegistryKey { .. } | Action::RotateVaultKey { .. } => self.mode == Mode::Monitor,
            Action::Notify { channel, .. } => self.notifier.as_ref().is_none_or(|n| n.channels().get(channel).is_err()),
        })
    }

    /// An event without side effects: work the outcome out first, then claim the event
    /// and write its record in one durable write (`Ledger::claim_or_record`). `Ok(Ok)`:
    /// recorded; `Ok(Err(claim))`: the id was known, carry on as after `claim`.
    async fn record_at_once(
        &self,
        event: &Event,
        input: &PolicyInput,
        decided: &Decided,
    ) -> Result<Result<Vec<ActionOutcome>, Claim>, StageError> {
        // Nothing here writes to the ledger or Azure, so a scratch ticket is enough.
        let mut scratch = ClaimTicket {
            event_id: event.id.clone(),
            token: String::new(),
            attempt: 1,
            expires_at: chrono::Utc::now(),
            progress: Vec::new(),
        };
        let actions =
            self.run(event, input, decided, &mut scratch).await.map_err(|Retry(m)| StageError::retryable("act", m))?;
        let record = audit::record(event, decided, actions, self.mode_str());
        match self.ledger.claim_or_record(&record, self.claim_ttl).await.map_err(|e| ledger_error(&e))? {
            None => Ok(Ok(record.actions)),
            Some(claim) => Ok(Err(claim)),
        }
    }
}

/// The configured channels as the notify crate takes them.
pub fn channels(config: &crate::config::Config) -> Result<cmkguard_notify::Channels, String> {
    use crate::config::ChannelKind as K;
    use cmkguard_notify::{ChannelConfig, ChannelKind};
    let list = config
        .channels
        .iter()
        .map(|c| {
            let kind = match c.kind {
                K::Teams => ChannelKind::Teams,
                K::Slack => ChannelKind::Slack,
                K::Webhook => ChannelKind::Webhook,
            };
            ChannelConfig::new(&c.name, kind, &c.url, c.secret.as_deref())
                .map_err(|e| format!("CMKGUARD_CHANNELS: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    cmkguard_notify::Channels::new(list).map_err(|e| format!("CMKGUARD_CHANNELS: {e}"))
}

impl ActStage {
    /// From validated configuration: the ledger (opened now), the channels, the mode and
    /// the Azure clients the enrich stage already built.
    pub async fn from_config(config: &crate::config::Config, azure: Option<AzureClients>) -> Result<Self, String> {
        let credential = crate::cli::audit::ledger_credential(config).map_err(|e| e.message)?;
        let ledger = cmkguard_ledger::open(&config.ledger, credential)
            .await
            .map_err(|e| format!("CMKGUARD_LEDGER: cannot open the ledger: {e}"))?;
        Self::new(config, ledger, azure)
    }

    /// With an opened ledger (tests, the demo); the chat client reads the CA roots itself.
    pub fn new(
        config: &crate::config::Config,
        ledger: Arc<dyn Ledger>,
        azure: Option<AzureClients>,
    ) -> Result<Self, String> {
        Self::with_tls(config, ledger, azure, None)
    }

    /// With an opened ledger and, for a server, the process's shared TLS settings: the
    /// chat client then uses the CA roots already read at start (BENCHMARKS.md "Cold start").
    pub fn with_tls(
        config: &crate::config::Config,
        ledger: Arc<dyn Ledger>,
        azure: Option<AzureClients>,
        tls: Option<&cmkguard_azure::SharedTls>,
    ) -> Result<Self, String> {
        let channels = channels(config)?;
        let retry = cmkguard_notify::RetryPolicy::default();
        let notifier = if channels.is_empty() {
            None
        } else {
            let notifier = match tls {
                Some(tls) => Notifier::with_client_builder(channels, retry, tls.client_builder()),
                None => Notifier::new(channels, retry),
            };
            Some(notifier.map_err(|e| e.to_string())?)
        };
        Ok(Self {
            ledger,
            notifier,
            azure,
            mode: config.mode,
            dedupe_window: config.notify_dedupe,
            enable_vault_key_rotation: config.enable_vault_key_rotation,
            budget: config.azure.budget,
            claim_ttl: config.claim_ttl,
        })
    }
}
