//! Best-effort delivery of the Event Grid events azsim's changes cause (key rotation →
//! `KeyNewVersionCreated`, registry write → `ResourceWriteSuccess`) to one webhook.

use serde_json::Value;
use tokio::sync::mpsc;

/// Start the emitter task; events sent on the returned channel are POSTed one per
/// request as an Event Grid schema array.
pub fn spawn(url: String) -> (mpsc::UnboundedSender<Value>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
    let task = tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "azsim event emitter: cannot build HTTP client");
                return;
            }
        };
        while let Some(ev) = rx.recv().await {
            let event_type = ev["eventType"].as_str().unwrap_or("?").to_owned();
            let body = Value::Array(vec![ev]);
            let res = client
                .post(&url)
                .header("aeg-event-type", "Notification")
                .header("content-type", "application/json; charset=utf-8")
                .json(&body)
                .send()
                .await;
            // The webhook URL may carry a key; log only the outcome.
            match res {
                Ok(r) => tracing::info!(event_type, status = r.status().as_u16(), "azsim delivered event"),
                Err(e) => tracing::warn!(event_type, error = %e.without_url(), "azsim event delivery failed"),
            }
        }
    });
    (tx, task)
}
