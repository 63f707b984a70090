//! AWS emulation for the e2e tests: moto's server, started by `scripts/test`, reached
//! through the real AWS SDK (static dummy credentials, region us-east-1).

use std::sync::atomic::{AtomicU64, Ordering};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_secretsmanager::config::Credentials;

/// Variable with moto's base URL, exported by `scripts/test`.
pub const MOTO_ENDPOINT_VAR: &str = "MOTO_ENDPOINT";

/// moto's base URL. Panics (never skips) when the test was not started by `scripts/test`.
pub fn endpoint() -> String {
    match std::env::var(MOTO_ENDPOINT_VAR) {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
        _ => panic!(
            "{MOTO_ENDPOINT_VAR} is not set: these tests need moto's server; run them with scripts/test \
             (it starts moto and exports {MOTO_ENDPOINT_VAR})"
        ),
    }
}

/// An AWS config pointed at moto.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .endpoint_url(endpoint())
        .load()
        .await
}

pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
}

pub async fn secretsmanager() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk_config().await)
}

/// A name no other test (or earlier run against the same moto) uses.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The bridge's state table as the template declares it: partition key `pk` (S) only,
/// pay-per-request, TTL on `expires_at`.
pub async fn create_table(name: &str) {
    let client = dynamodb().await;
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key schema"),
        )
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create table {name}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )
        });
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expires_at")
                .enabled(true)
                .build()
                .expect("ttl spec"),
        )
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "enable TTL on {name}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&e)
            )
        });
}

/// Create a secret holding `json`; returns its ARN.
pub async fn create_secret(name: &str, json: &str) -> String {
    let output = secretsmanager()
        .await
        .create_secret()
        .name(name)
        .secret_string(json)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create secret {name}: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
            )
        });
    output.arn().unwrap_or(name).to_string()
}

/// Replace the secret's value (a rotation).
pub async fn put_secret(name: &str, json: &str) {
    secretsmanager()
        .await
        .put_secret_value()
        .secret_id(name)
        .secret_string(json)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "put secret {name}: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
            )
        });
}
