//! The Secrets Manager source through the real AWS SDK against moto: reading, caching
//! within the TTL, refresh after a rotation, rotation fields, and errors that name the
//! problem without the value.

use std::time::Duration;

use e2e_tests::moto;
use loyalty_bridge::Error;
use loyalty_bridge::secrets::{self, SecretSource, SecretsManagerSource};

const SECRET_JSON: &str = r#"{
    "klaviyo_private_key": "pk_moto_1",
    "trifft_api_token": "tt_moto_1",
    "klaviyo_webhook_secret": "wh_now",
    "klaviyo_webhook_secret_previous": "wh_before",
    "custom_events_secret": "user:pass",
    "custom_events_secret_previous": "",
    "an_unknown_key": "ignored"
}"#;

async fn source(secret_id: &str, ttl: Duration) -> SecretsManagerSource {
    SecretsManagerSource::new(moto::secretsmanager().await, secret_id.to_string(), ttl)
}

#[tokio::test]
async fn reads_every_field_of_the_secret() {
    let name = moto::unique_name("bridge-secret");
    let arn = moto::create_secret(&name, SECRET_JSON).await;
    let secrets = source(&arn, Duration::from_secs(300))
        .await
        .get()
        .await
        .unwrap();
    assert_eq!(
        secrets.klaviyo_private_key.as_ref().unwrap().expose(),
        "pk_moto_1"
    );
    assert_eq!(
        secrets.trifft_api_token.as_ref().unwrap().expose(),
        "tt_moto_1"
    );
    let hook = secrets.klaviyo_webhook.as_ref().unwrap();
    assert_eq!(
        hook.accepted().map(|s| s.expose()).collect::<Vec<_>>(),
        ["wh_now", "wh_before"]
    );
    let custom = secrets.custom_events.as_ref().unwrap();
    assert_eq!(custom.current.expose(), "user:pass");
    assert_eq!(custom.previous, None, "an empty previous value is absent");
    assert_eq!(secrets.klaviyo_system_webhook, None);
    assert!(!format!("{secrets:?}").contains("pk_moto_1"));
}

#[tokio::test]
async fn caches_within_the_ttl_and_refresh_sees_a_rotation() {
    let name = moto::unique_name("bridge-secret");
    moto::create_secret(&name, r#"{"trifft_api_token":"old"}"#).await;
    let source = source(&name, Duration::from_millis(1500)).await;
    let token = |s: &loyalty_bridge::secrets::BridgeSecrets| {
        s.trifft_api_token.as_ref().unwrap().expose().to_string()
    };
    assert_eq!(token(&source.get().await.unwrap()), "old");

    moto::put_secret(
        &name,
        r#"{"trifft_api_token":"new","trifft_api_token_previous":"old"}"#,
    )
    .await;
    assert_eq!(
        token(&source.get().await.unwrap()),
        "old",
        "within the TTL the cached value is served"
    );
    assert_eq!(
        token(&source.refresh().await.unwrap()),
        "new",
        "refresh reads Secrets Manager again"
    );

    moto::put_secret(&name, r#"{"trifft_api_token":"newer"}"#).await;
    assert_eq!(token(&source.get().await.unwrap()), "new");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        token(&source.get().await.unwrap()),
        "newer",
        "after the TTL get fetches"
    );
}

#[tokio::test]
async fn from_sdk_config_is_lazy_and_uses_the_named_secret() {
    let name = moto::unique_name("bridge-secret");
    let config = moto::sdk_config().await;
    let vars = [
        ("BRIDGE_SECRET_ARN", name.as_str()),
        ("SECRETS_CACHE_SECONDS", "60"),
    ];
    // Nothing is read at start: the secret does not exist yet.
    let source = secrets::from_sdk_config(&vars, &config).unwrap();
    moto::create_secret(&name, SECRET_JSON).await;
    let secrets = source.get().await.unwrap();
    assert_eq!(
        secrets.trifft_api_token.as_ref().unwrap().expose(),
        "tt_moto_1"
    );
}

#[tokio::test]
async fn a_secret_that_is_not_json_fails_without_its_value() {
    let name = moto::unique_name("bridge-secret");
    moto::create_secret(&name, "pk_live_LEAKME not json").await;
    let e = source(&name, Duration::from_secs(300))
        .await
        .get()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Secret(_)), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains("not a JSON object") && message.contains(&name),
        "{message}"
    );
    assert!(
        !message.contains("LEAKME") && !format!("{e:?}").contains("LEAKME"),
        "{message}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn a_missing_secret_is_a_clear_non_retryable_error() {
    let name = moto::unique_name("no-such-secret");
    let source = source(&name, Duration::from_secs(300)).await;
    let e = source.get().await.unwrap_err();
    assert!(matches!(e, Error::Secret(_)), "{e:?}");
    assert!(
        e.to_string().contains(&name) && e.to_string().contains("does not exist"),
        "{e}"
    );
    assert!(!e.is_retryable());
    // The failure is not cached: once the secret exists, the next call reads it.
    moto::create_secret(&name, SECRET_JSON).await;
    assert!(
        source
            .refresh()
            .await
            .unwrap()
            .klaviyo_private_key
            .is_some()
    );
}

#[tokio::test]
async fn an_unreachable_secrets_manager_is_retryable() {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
            "t", "t", None, None, "test",
        ))
        // A port nothing listens on (bound, then released).
        .endpoint_url(format!("http://127.0.0.1:{}", unused_port()))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await;
    let source = SecretsManagerSource::new(
        aws_sdk_secretsmanager::Client::new(&config),
        "bridge".into(),
        Duration::from_secs(300),
    );
    let e = source.get().await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert!(e.is_retryable());
}

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
