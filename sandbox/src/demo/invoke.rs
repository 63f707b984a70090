//! Invocations built the way the Lambda runtime builds them, so the demo runs the very
//! handler code Lambda runs: a `Context` from the Runtime API's headers, an API Gateway
//! HTTP API v2 event turned into a `lambda_http::Request` as `lambda_http`'s adapter does.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lambda_http::http::{HeaderMap, HeaderName, HeaderValue};
use lambda_http::request::LambdaRequest;
use lambda_http::{Request, RequestExt};
use lambda_runtime::{Config, Context, LambdaEvent};

use crate::ids;

/// The account and region the invoked function ARNs name (fictional, like the samples').
const ACCOUNT: &str = "123456789012";
const REGION: &str = "eu-central-1";

/// One function as Lambda would configure it.
#[derive(Debug, Clone)]
pub(crate) struct FunctionEnv {
    config: Arc<Config>,
    rng_seed: u64,
}

impl FunctionEnv {
    pub(crate) fn new(function_name: &str, seed: u64) -> Self {
        FunctionEnv {
            config: Arc::new(Config {
                function_name: function_name.to_string(),
                memory: 256,
                version: "$LATEST".into(),
                log_stream: String::new(),
                log_group: format!("/aws/lambda/{function_name}"),
            }),
            rng_seed: seed,
        }
    }

    /// The context of invocation number `n`, its deadline `budget` from now. `Context` is
    /// non-exhaustive, so it is built as the runtime builds it: from the headers of the
    /// Runtime API's `next` answer.
    pub(crate) fn context(&self, n: u64, budget: Duration) -> Result<Context, String> {
        let mut rng = fastrand::Rng::with_seed(self.rng_seed.wrapping_add(n));
        let request_id = ids::uuid(&mut rng);
        let deadline_ms = Utc::now().timestamp_millis().max(0) as u128 + budget.as_millis();
        let trace_id = format!(
            "Root=1-{:08x}-{:024x};Parent={:016x};Sampled=0",
            Utc::now().timestamp(),
            rng.u128(..) >> 32,
            rng.u64(..)
        );
        let arn = format!(
            "arn:aws:lambda:{REGION}:{ACCOUNT}:function:{}",
            self.config.function_name
        );
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("lambda-runtime-aws-request-id", request_id.as_str()),
            ("lambda-runtime-deadline-ms", &deadline_ms.to_string()),
            ("lambda-runtime-invoked-function-arn", &arn),
            ("lambda-runtime-trace-id", &trace_id),
        ] {
            let value = HeaderValue::from_str(value).map_err(|e| format!("{name}: {e}"))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        Context::new(&request_id, self.config.clone(), &headers).map_err(|e| e.to_string())
    }
}

/// An API Gateway HTTP API (payload v2) event as the HTTP handlers receive it: decoded
/// into `LambdaRequest`, converted, the X-Ray trace id header set from the context and
/// the context put in the extensions (what `lambda_http::Adapter::call` does).
pub(crate) fn http_request(event_json: &str, context: Context) -> Result<Request, String> {
    let payload: LambdaRequest = serde_json::from_str(event_json)
        .map_err(|e| format!("not an API Gateway HTTP API event: {e}"))?;
    let mut request: Request = payload.into();
    if let Some(trace_id) = context.xray_trace_id.as_deref()
        && let Ok(value) = HeaderValue::from_str(trace_id)
    {
        request
            .headers_mut()
            .insert(HeaderName::from_static("x-amzn-trace-id"), value);
    }
    Ok(request.with_lambda_context(context))
}

/// A plain JSON event (the schedule's), as `lambda_runtime` hands it to a handler.
pub(crate) fn json_event(
    event_json: &str,
    context: Context,
) -> Result<LambdaEvent<serde_json::Value>, String> {
    let payload = serde_json::from_str(event_json).map_err(|e| format!("not a JSON event: {e}"))?;
    Ok(LambdaEvent::new(payload, context))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::Body;

    const EVENT: &str = r#"{"version":"2.0","routeKey":"POST /hook","rawPath":"/hook","rawQueryString":"a=1",
        "headers":{"content-type":"application/json","x-amzn-trace-id":"Root=sample"},
        "requestContext":{"accountId":"1","apiId":"x","domainName":"x.example","domainPrefix":"x",
          "http":{"method":"POST","path":"/hook","protocol":"HTTP/1.1","sourceIp":"203.0.113.1","userAgent":"t"},
          "requestId":"r1","routeKey":"POST /hook","stage":"$default","time":"01/Dec/2026:10:15:01 +0000","timeEpoch":1796119301000},
        "body":"eyJhIjoxfQ==","isBase64Encoded":true}"#;

    #[test]
    fn context_carries_a_deadline_ahead_and_the_function() {
        let env = FunctionEnv::new("standard-sync", 3);
        let before = Utc::now().timestamp_millis() as u64;
        let ctx = env.context(1, Duration::from_secs(60)).unwrap();
        assert!(ctx.deadline >= before + 59_000 && ctx.deadline <= before + 61_000);
        assert!(
            ctx.invoked_function_arn
                .ends_with(":function:standard-sync")
        );
        assert_eq!(ctx.env_config.function_name, "standard-sync");
        assert_eq!(ctx.request_id.len(), 36);
        assert_ne!(
            ctx.request_id,
            env.context(2, Duration::from_secs(1)).unwrap().request_id
        );
    }

    #[test]
    fn http_event_becomes_the_request_lambda_http_builds() {
        let ctx = FunctionEnv::new("hook", 1)
            .context(1, Duration::from_secs(30))
            .unwrap();
        let trace = ctx.xray_trace_id.clone().unwrap();
        let request_id = ctx.request_id.clone();
        let request = http_request(EVENT, ctx).unwrap();
        assert_eq!(request.method(), "POST");
        assert_eq!(request.uri().path(), "/hook");
        // Base64 bodies are decoded, as lambda_http does.
        assert!(matches!(request.body(), Body::Binary(b) if b == b"{\"a\":1}"));
        assert_eq!(request.headers()["x-amzn-trace-id"], trace.as_str());
        assert_eq!(request.lambda_context_ref().unwrap().request_id, request_id);
        assert!(http_request("{\"not\": \"an event\"}", Context::default()).is_err());
    }
}
