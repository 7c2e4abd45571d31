//! `cmkguard serve`: run the HTTP server until SIGTERM / Ctrl-C, then drain and exit.

use std::sync::Arc;

use crate::config::{Config, Settings};
use crate::{AppState, logging};

use super::{CliError, exit};

#[derive(Debug, clap::Args)]
#[command(long_about = "Serve the Azure Functions custom-handler protocol.\n\n\
Routes: GET / (readiness), POST /{FunctionName} (KeyVaultEvents, RegistryEvents, Sweep; \
called by the Functions host), POST|OPTIONS /api/events (direct Event Grid / CloudEvents \
webhook, needs CMKGUARD_WEBHOOK_KEY).")]
pub struct Args {
    #[command(flatten)]
    pub settings: Settings,
}

pub async fn run(args: Args) -> Result<u8, CliError> {
    let config = Config::from_settings(args.settings, |k| std::env::var(k).ok()).map_err(CliError::bad_input)?;
    logging::init(config.log_format, &config.log_filter);
    // Bind first: the Functions host polls the port and counts a refused connection as
    // "not ready yet"; slow work (policy compile) happens after.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| CliError::bad_input(format!("cannot listen on {}: {e}", config.listen)))?;
    let state = Arc::new(AppState::from_config(config).await.map_err(CliError::bad_input)?);
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), mode = state.config.mode.as_str(), "cmkguard listening");
    // Ready now; the first event's Azure work (token, TLS connection) starts meanwhile.
    if let Some(sweeper) = &state.sweeper {
        let http = sweeper.clients.http.clone();
        let budget = cmkguard_azure::Budget::new(state.config.azure.budget);
        drop(tokio::spawn(async move { http.warm_up(&budget).await }));
    }
    crate::api::serve(listener, state)
        .await
        .map_err(|e| CliError { code: 1, message: format!("server failed: {e}") })?;
    tracing::info!("drained; exiting");
    Ok(exit::OK)
}
