//! Wiring only: settings (fail fast, naming the variable), clients built once, then the
//! handler in lib.rs for every request.

use klaviyo_webhook::{Deps, WebhookSettings, handler};
use lambda_http::{Error, service_fn};
use loyalty_bridge::config::ProcessEnv;
use loyalty_bridge::trifft::{TrifftClient, TrifftSettings};
use loyalty_bridge::{secrets, state};
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    let env = ProcessEnv;
    let trifft_settings = TrifftSettings::from_env(&env)?;
    let settings = WebhookSettings::from_env(&env)?.with_paths(trifft_settings.paths.clone());
    let secrets = secrets::from_env(&env).await?;
    let trifft = Arc::new(TrifftClient::new(trifft_settings, secrets.clone())?);
    let state = state::from_env(&env).await?;
    let deps = Deps {
        trifft,
        state,
        secrets,
        settings,
    };
    let deps = &deps;
    lambda_http::run(service_fn(move |request| async move {
        handler(deps, request).await
    }))
    .await
}
