//! What a notification costs: rendering each payload, signing a webhook body, and one
//! whole send (render, sign, HTTP POST over loopback, the sink's shape check and
//! signature verification) to the local chat sink. Results go to BENCHMARKS.md.

use std::hint::black_box;

use chrono::TimeZone;
use cmkguard_notify::notification::sample;
use cmkguard_notify::send::render;
use cmkguard_notify::sink::ChatSink;
use cmkguard_notify::{ChannelKind, Channels, Notifier, RetryPolicy, SigningKey, webhook};
use criterion::{Criterion, criterion_group, criterion_main};

fn benches(c: &mut Criterion) {
    let n = sample(chrono::Utc.with_ymd_and_hms(2026, 11, 23, 9, 30, 0).unwrap());
    for kind in ChannelKind::ALL {
        c.bench_function(&format!("render/{kind}"), |b| b.iter(|| render(kind, black_box(&n), "id")));
    }
    let key = SigningKey::new("bench-signing-secret-0123456789").unwrap();
    let body = render(ChannelKind::Webhook, &n, "id").body;
    c.bench_function("sign/webhook", |b| b.iter(|| webhook::sign(&key, 1_795_000_000, black_box(&body))));

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (sink, notifier) = rt.block_on(async {
        let sink = ChatSink::start().await.unwrap();
        let chans = Channels::new(vec![
            sink.channel("ops", ChannelKind::Teams, None).unwrap(),
            sink.channel("dev", ChannelKind::Slack, None).unwrap(),
            sink.channel("hook", ChannelKind::Webhook, Some("bench-signing-secret-0123456789")).unwrap(),
        ])
        .unwrap();
        (sink, Notifier::new(chans, RetryPolicy::default()).unwrap())
    });
    for (name, ch) in [("teams", "ops"), ("slack", "dev"), ("webhook", "hook")] {
        c.bench_function(&format!("send-to-sink/{name}"), |b| {
            b.iter(|| {
                let d = rt.block_on(notifier.notify(ch, &n)).unwrap();
                assert!(d.is_sent());
            })
        });
    }
    drop(sink);
}

criterion_group! {
    name = notify;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(4));
    targets = benches
}
criterion_main!(notify);
