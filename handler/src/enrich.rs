//! The enrich stage backed by Azure: [`AzureEnrich`] implements [`Enrich`] with
//! `cmkguard_azure::Enricher` (key events → key facts + every registry using the key;
//! registry writes and sweeps → the registry + its key), mapping Azure errors onto the
//! pipeline's retryable / terminal classes.
//!
//! `serve` always uses it: a real deployment always has Azure, and building the clients
//! contacts nothing (the first token is fetched by the first event). Tests that do not
//! want Azure pass their own pipeline (`AppState::with_pipeline`, `EventOnly`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cmkguard_azure::{AzureClients, AzureError, AzureSettings, Class, Enricher};
use cmkguard_model::{Event, PolicyInput};

use crate::config::Config;
use crate::pipeline::{Enrich, ErrorClass, StageError};

/// Event → facts, from Azure.
#[derive(Debug)]
pub struct AzureEnrich {
    inner: Enricher,
}

/// The Azure part of the configuration, as the Azure crate takes it.
pub fn azure_settings(config: &Config) -> AzureSettings {
    AzureSettings {
        cloud: config.azure.cloud.clone(),
        client_id: config.azure.client_id.clone(),
        subscriptions: config.azure.subscriptions.clone(),
        budget: config.azure.budget,
    }
}

/// Clients for the configured cloud with credentials from the process environment.
pub fn clients_from_config(config: &Config) -> Result<AzureClients, AzureError> {
    AzureClients::from_settings(&azure_settings(config), |k| std::env::var(k).ok())
}

impl AzureEnrich {
    pub fn new(inner: Enricher) -> Self {
        Self { inner }
    }

    /// From validated configuration: cloud profile, identity, subscriptions, budget and the
    /// policy's settings (passed through to every input).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let clients = clients_from_config(config).map_err(|e| e.to_string())?;
        Ok(Self::with_clients(config, clients))
    }

    /// [`AzureEnrich::from_config`] with the process's shared TLS settings.
    pub fn from_config_with(config: &Config, tls: &cmkguard_azure::SharedTls) -> Result<Self, String> {
        let clients = AzureClients::from_settings_with(&azure_settings(config), |k| std::env::var(k).ok(), tls)
            .map_err(|e| e.to_string())?;
        Ok(Self::with_clients(config, clients))
    }

    fn with_clients(config: &Config, clients: AzureClients) -> Self {
        Self::new(Enricher::new(
            clients,
            config.azure.subscriptions.clone(),
            config.azure.budget,
            config.policy.settings.clone(),
        ))
    }

    pub fn enricher(&self) -> &Enricher {
        &self.inner
    }
}

/// Azure's error class, in the pipeline's terms.
pub fn stage_error(e: &AzureError) -> StageError {
    let class = match e.class() {
        Class::Retryable => ErrorClass::Retryable,
        Class::Terminal => ErrorClass::Terminal,
    };
    StageError { stage: "enrich", class, message: e.to_string() }
}

#[async_trait]
impl Enrich for AzureEnrich {
    async fn enrich(&self, event: &Event, now: DateTime<Utc>) -> Result<PolicyInput, StageError> {
        self.inner.enrich(event, now).await.map_err(|e| {
            let err = stage_error(&e);
            tracing::warn!(event_id = %event.id, class = ?err.class, error = %e, "enrich failed");
            err
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn classes_map_onto_the_pipeline() {
        let busy = AzureError::BudgetExhausted {
            operation: "op",
            budget: Duration::from_secs(25),
            attempts: 3,
            last: "429".into(),
        };
        assert_eq!(stage_error(&busy).class, ErrorClass::Retryable);
        let refused =
            AzureError::NotAllowed { operation: "op", host: "evil".into(), reason: "r".into(), cloud: "public".into() };
        let e = stage_error(&refused);
        assert_eq!(e.class, ErrorClass::Terminal);
        assert_eq!(e.stage, "enrich");
        assert!(e.message.contains("evil"));
    }
}
