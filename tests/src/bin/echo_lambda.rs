//! A minimal Lambda function for the harness test of `lambda_watch`: answers with the
//! payload it got, its request id and the `ECHO_NOTE` variable it was started with.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

async fn echo(event: LambdaEvent<Value>) -> Result<Value, Error> {
    if event.payload.get("fail").is_some() {
        return Err("asked to fail".into());
    }
    Ok(json!({
        "payload": event.payload,
        "request_id": event.context.request_id,
        "note": std::env::var("ECHO_NOTE").ok(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(echo)).await
}
