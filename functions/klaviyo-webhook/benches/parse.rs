//! Parse + validate + batch items + key: the CPU work of one delivery, without I/O.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use klaviyo_webhook::{WebhookSettings, idempotency_key, parse_request, to_batch_items};
use serde_json::json;

const M: &str = "bf428af0-1c2d-4e5f-91b5-bda6e211aa00";

fn bench(c: &mut Criterion) {
    let settings = WebhookSettings::default();
    let single = json!({"action": "credit_points", "member": {"trifft_id": M}, "points": "50", "reason": "Birthday", "idempotency_key": "bday-1"})
        .to_string();
    let actions: Vec<_> = (0..500)
        .map(|i| match i % 4 {
            0 => json!({"action": "credit_points", "member": {"trifft_id": M}, "points": i + 1}),
            1 => json!({"action": "assign_coupon", "member": {"trifft_id": M}, "coupon_id": format!("c-{i}")}),
            2 => json!({"action": "add_to_segment", "member": {"trifft_id": M}, "segment": "vip"}),
            _ => json!({"action": "remove_from_segment", "member": {"trifft_id": M}, "segment": "lapsed"}),
        })
        .collect();
    let batch = json!({ "actions": actions }).to_string();
    let settings = WebhookSettings {
        max_points_per_request: 10_000_000,
        ..settings
    };

    let mut group = c.benchmark_group("parse_validate");
    for (name, body) in [("single_action", &single), ("batch_500", &batch)] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let request = parse_request(black_box(body.as_bytes()), &settings).expect("valid");
                let items = to_batch_items(&request.actions, &settings.paths);
                black_box((idempotency_key(&request), items))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
