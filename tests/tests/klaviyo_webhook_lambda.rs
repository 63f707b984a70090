//! The built klaviyo-webhook binary under `cargo lambda watch` (a Lambda Runtime API
//! emulator) answers every sample in events/klaviyo-webhook with its documented status,
//! against the TRIFFT emulator, with in-memory state (no STATE_TABLE_NAME). Run by
//! scripts/test (cargo-lambda on PATH, moto running).
//!
//! The bridge secret comes from Secrets Manager in moto (BRIDGE_SECRET_ARN), as in AWS:
//! the harness hands variables to `cargo lambda watch --env-var`, which splits values on
//! commas, so SANDBOX_SECRETS_JSON (a JSON object with two keys) cannot pass through it.

#[path = "klaviyo_webhook_support.rs"]
mod support;

use e2e_tests::lambda_watch::LambdaWatch;
use e2e_tests::moto;
use sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

use support::{HOOK_SECRET, TRIFFT_TOKEN};

#[tokio::test]
async fn the_binary_answers_every_sample_with_its_status() {
    let sb = Sandbox::start(SandboxConfig {
        seed: 11,
        members: 20,
        events: 20,
        ..Default::default()
    })
    .await
    .unwrap();
    let secrets = json!({"trifft_api_token": TRIFFT_TOKEN, "klaviyo_webhook_secret": HOOK_SECRET})
        .to_string();
    let secret_arn = moto::create_secret(&moto::unique_name("bridge-secret"), &secrets).await;
    let (trifft_url, moto_url) = (sb.trifft_url(), moto::endpoint());
    let watch = LambdaWatch::start(&[
        ("TRIFFT_BASE_URL", trifft_url.as_str()),
        ("BRIDGE_SECRET_ARN", secret_arn.as_str()),
        ("AWS_ENDPOINT_URL", moto_url.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("RUST_LOG", "info"),
    ])
    .await;

    // The first invoke waits for `cargo run` to build the binary, which can outlast the
    // invocation deadline the emulator set; warm up with a request that calls nobody.
    let warm_up = support::event_json(&json!({}), &[("x-bridge-secret", "warm-up")]);
    let answer = watch.invoke("klaviyo-webhook", warm_up).await;
    assert_eq!(answer["statusCode"], 401, "{answer}\n{}", watch.log_text());

    let mut accepted = 0;
    for (name, event, expected) in support::samples() {
        let answer = watch.invoke("klaviyo-webhook", event).await;
        let status = answer["statusCode"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: not an HTTP answer: {answer}"));
        assert_eq!(
            status,
            u64::from(expected),
            "{name}: {answer}\n{}",
            watch.log_text()
        );
        let body: Value =
            serde_json::from_str(answer["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        assert!(
            body.is_object(),
            "{name}: the body is a JSON object: {answer}"
        );
        if expected == 202 {
            accepted += 1;
        }
        if expected >= 400 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{name}: {body}"
            );
        }
    }
    assert_eq!(
        sb.trifft().batches.len(),
        accepted,
        "one TRIFFT batch per accepted sample"
    );

    let logs = watch.log_text();
    assert!(
        !logs.contains(HOOK_SECRET) && !logs.contains(TRIFFT_TOKEN),
        "no secret in the function's logs"
    );
    drop(watch);
    sb.stop().await;
}
