//! Prints the Teams webhook payload (a `message` with one Adaptive Card) that cmkguard
//! posts for a sample near-expiry notification. `docs/adaptive-card/render.sh` renders
//! it; `--kind slack|webhook` prints the other payloads for comparison.
//!
//! Usage: `cargo run --release -p cmkguard-notify --example teams-card [-- --kind slack]`

use chrono::TimeZone;
use cmkguard_notify::{ChannelKind, notification::sample, send::render};

fn main() {
    let mut kind = ChannelKind::Teams;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--kind", Some(k)) => match k.parse() {
                Ok(k) => kind = k,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("usage: teams-card [--kind teams|slack|webhook]");
                std::process::exit(2);
            }
        }
    }
    // A fixed "now", so the committed picture can be reproduced exactly.
    let now = chrono::Utc.with_ymd_and_hms(2026, 11, 23, 9, 30, 0).single().unwrap_or_else(chrono::Utc::now);
    let rendered = render(kind, &sample(now), "00000000-0000-4000-8000-000000000000");
    let value: serde_json::Value = serde_json::from_slice(&rendered.body).unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
}
