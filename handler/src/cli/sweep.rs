//! `cmkguard sweep`: every registry through the pipeline now, with a progress bar on a
//! terminal and a summary (table or JSON).

use std::io::IsTerminal;

use crate::AppState;
use crate::config::{Config, Settings};

use super::{CliError, exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these subscriptions (repeatable; default: the configured ones, else all visible).
    #[arg(long = "subscription", value_name = "ID")]
    pub subscriptions: Vec<String>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub settings: Settings,
}

pub async fn run(args: Args) -> Result<u8, CliError> {
    let mut settings = args.settings;
    if !args.subscriptions.is_empty() {
        settings.subscriptions = args.subscriptions;
    }
    let config = Config::from_settings(settings, |k| std::env::var(k).ok()).map_err(CliError::bad_input)?;
    crate::logging::init(config.log_format, &config.log_filter);
    let state = AppState::from_config(config).await.map_err(CliError::bad_input)?;
    let Some(sweeper) = &state.sweeper else {
        return Err(CliError::bad_input("no Azure clients configured"));
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} registries {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let summary = sweeper
        .run(&state.pipeline, |done, total| {
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        })
        .await
        .map_err(|e| CliError { code: 1, message: e.to_string() })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match args.output {
        Output::Table => print!("{}", summary.table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default()),
    }
    Ok(exit::OK)
}
