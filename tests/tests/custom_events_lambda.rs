//! The built custom-events binary under `cargo lambda watch`, configured as in AWS but
//! pointed at the sandbox: every sample in events/custom-events answers the status
//! expected.json documents, and re-delivering them stores no second Klaviyo event.
//!
//! The bridge secret comes from Secrets Manager (moto, started by `scripts/test`), as in
//! AWS. (SANDBOX_SECRETS_JSON cannot be passed: cargo-lambda splits `--env-var` values at
//! commas, and a secret JSON with more than one key has some.)

use std::collections::BTreeMap;

use e2e_tests::lambda_watch::{LambdaWatch, workspace_root};
use e2e_tests::moto;
use sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

#[tokio::test]
async fn the_binary_answers_every_sample_as_documented() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let secrets = json!({
        "klaviyo_private_key": "pk_sandbox_0123456789abcdef",
        "custom_events_secret": "sandbox-custom-secret",
        "custom_events_secret_previous": "trifft:sandbox-basic-secret",
    })
    .to_string();
    let secret_arn = moto::create_secret(&moto::unique_name("custom-events"), &secrets).await;
    let klaviyo_url = sandbox.klaviyo_url();
    let moto_url = moto::endpoint();
    let watch = LambdaWatch::start(&[
        ("KLAVIYO_BASE_URL", klaviyo_url.as_str()),
        ("BRIDGE_SECRET_ARN", secret_arn.as_str()),
        ("AWS_ENDPOINT_URL", moto_url.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("RUST_LOG", "info"),
    ])
    .await;

    let dir = workspace_root().join("events/custom-events");
    let expected: BTreeMap<String, u16> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut sent = 0;
    for round in 0..2 {
        for (name, status) in &expected {
            let sample: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
            let answer = watch.invoke("custom-events", sample).await;
            assert_eq!(
                answer["statusCode"],
                *status,
                "{name} (round {round}): {answer}\n{}",
                watch.log_text()
            );
            let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
            if *status == 202 && round == 0 {
                sent += body["events"].as_array().unwrap().len();
            }
            if *status == 503 {
                assert!(answer["headers"]["retry-after"].is_string(), "{answer}");
            }
        }
    }
    let snapshot = sandbox.klaviyo();
    assert_eq!(sent, 8);
    assert_eq!(
        snapshot.events.len(),
        sent,
        "the second round (a re-delivery) stored nothing new"
    );
    assert_eq!(snapshot.duplicates_dropped as usize, sent);
    let log = watch.log_text();
    for secret in [
        "sandbox-custom-secret",
        "sandbox-basic-secret",
        "pk_sandbox_0123456789abcdef",
    ] {
        assert!(!log.contains(secret), "a secret reached the log:\n{log}");
    }
    drop(watch);
    sandbox.stop().await;
}
