//! Wiring only: settings and mapping (validated, fail fast), clients once, then the handler.
use std::sync::Arc;

use custom_events::{CustomEventsSettings, Deps, handler, load_mapping};
use lambda_http::{run, service_fn};
use loyalty_bridge::config::ProcessEnv;
use loyalty_bridge::klaviyo::{KlaviyoClient, KlaviyoSettings};
use loyalty_bridge::secrets;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let env = ProcessEnv;
    let settings = CustomEventsSettings::from_env(&env)?;
    let mapping = Arc::new(load_mapping(&env)?);
    let secrets = secrets::from_env(&env).await?;
    let klaviyo = Arc::new(KlaviyoClient::new(
        KlaviyoSettings::from_env(&env)?,
        secrets.clone(),
    )?);
    tracing::info!(
        rules = mapping.rules.len(),
        default_rule = mapping.default.is_some(),
        "custom-events ready"
    );
    let deps = Deps {
        klaviyo,
        secrets,
        mapping,
        settings,
    };
    run(service_fn(|request| handler(&deps, request))).await
}
