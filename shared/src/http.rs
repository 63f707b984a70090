//! The one send-with-retry loop both vendor clients use: pace, authenticate, send, and
//! decide from the answer whether to return, retry, refresh the credential or fail with
//! a typed [`Error`]. What differs between Klaviyo and TRIFFT (credential, error body,
//! how long a 429 blocks, which statuses are transient) is a [`Vendor`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use tokio::time::Instant;

use crate::error::ApiErrorDetail;
use crate::klaviyo::ClientStats;
use crate::pacing::RateLimiter;
use crate::retry::RetryPolicy;
use crate::secrets::{BridgeSecrets, SecretSource};
use crate::{Deadline, Error, Result, Service};

/// Longest piece of a vendor's body kept in an error (bodies can be large HTML pages).
const MAX_DETAIL_CHARS: usize = 512;

/// What a vendor client tells the loop.
pub(crate) trait Vendor: Send + Sync {
    fn service(&self) -> Service;
    /// The `Authorization` header value built from the bridge secret.
    fn authorization(&self, secrets: &BridgeSecrets) -> Result<HeaderValue>;
    /// The vendor's error body, decoded leniently.
    fn error_details(&self, body: &[u8]) -> Vec<ApiErrorDetail>;
    /// How long a 429 asks us to hold every request to this endpoint, when it says so.
    fn throttle_wait(&self, headers: &HeaderMap, details: &[ApiErrorDetail]) -> Option<Duration>;
    /// 5xx statuses that are worth another attempt.
    fn is_transient(&self, status: u16) -> bool;
}

/// Whether a request may be sent again when it is unknown whether the vendor got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Sending it twice does no harm (a GET, or a write the vendor de-duplicates).
    Safe,
    /// Sending it twice could apply it twice (a TRIFFT batch crediting points): retry only
    /// when the vendor surely did not act on it (connection refused, 429, 503).
    OnlyIfNotReceived,
}

/// One request to send.
pub(crate) struct Request<'a> {
    pub method: Method,
    pub url: Url,
    pub body: Option<Bytes>,
    pub content_type: Option<&'static str>,
    pub limiter: &'a RateLimiter,
    pub replay: Replay,
}

/// A 2xx answer.
#[derive(Debug)]
pub(crate) struct Response {
    pub body: Bytes,
}

/// Request, retry and throttle counts of one client.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    throttles: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> ClientStats {
        ClientStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttles: self.throttles.load(Ordering::Relaxed),
        }
    }
}

/// What both clients hold: the HTTP client built once, the secrets, the retry rules.
pub(crate) struct Engine {
    pub http: reqwest::Client,
    pub secrets: Arc<dyn SecretSource>,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
    pub counters: Counters,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to, before deciding what to do next.
enum Outcome {
    Answer {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
    Failed {
        error: reqwest::Error,
        surely_not_received: bool,
    },
}

impl Engine {
    /// A reqwest client with rustls, the given default headers, and no redirects: a
    /// redirect could carry the credential to another host.
    pub fn http_client(default_headers: HeaderMap, service: Service) -> Result<reqwest::Client> {
        reqwest::Client::builder()
            .user_agent(concat!("trifft-klaviyo-bridge/", env!("CARGO_PKG_VERSION")))
            .default_headers(default_headers)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Transport {
                service,
                detail: format!("cannot build the HTTP client: {e}"),
            })
    }

    /// Send `request` until it succeeds, fails for good, or the attempts or the deadline
    /// run out.
    pub async fn send(
        &self,
        vendor: &dyn Vendor,
        request: Request<'_>,
        deadline: Deadline,
    ) -> Result<Response> {
        let service = vendor.service();
        let path = request.url.path().to_string();
        let mut rng = fastrand::Rng::new();
        let mut attempts: u32 = 0;
        let mut refreshed = false;
        let mut secrets = None;
        loop {
            if deadline.remaining().is_zero() {
                return Err(Error::DeadlineExceeded { service });
            }
            let current = match secrets.take() {
                Some(fresh) => fresh,
                None => self.secrets.get().await?,
            };
            let authorization = vendor.authorization(&current)?;
            if let Err(wait) = request.limiter.acquire(deadline).await {
                tracing::debug!(%service, method = %request.method, %path, wait_ms = wait.as_millis() as u64, "pacing wait passes the deadline");
                return Err(Error::RateLimited {
                    service,
                    retry_after: wait,
                });
            }
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Err(Error::DeadlineExceeded { service });
            }
            // An attempt never outlives the deadline: it gets the request timeout or what is left.
            let cut_by_deadline = remaining < self.request_timeout;
            let timeout = self.request_timeout.min(remaining);

            attempts += 1;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            if attempts > 1 {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let outcome = self.attempt(&request, authorization, timeout).await;

            // What to wait before the next attempt, or the error to return.
            let (wait, error) = match outcome {
                Outcome::Answer { status, body, .. } if (200..300).contains(&status) => {
                    tracing::debug!(%service, method = %request.method, %path, status, attempt = attempts, "answered");
                    return Ok(Response { body });
                }
                Outcome::Answer {
                    status,
                    headers,
                    body,
                } => {
                    tracing::debug!(%service, method = %request.method, %path, status, attempt = attempts, "refused");
                    let details = vendor.error_details(&body);
                    match status {
                        401 if !refreshed => {
                            // The secret may have been rotated since it was cached.
                            refreshed = true;
                            secrets = Some(self.secrets.refresh().await?);
                            continue;
                        }
                        401 => {
                            return Err(Error::Unauthorized {
                                service,
                                detail: summary(&details),
                            });
                        }
                        403 => {
                            return Err(Error::Forbidden {
                                service,
                                detail: summary(&details),
                            });
                        }
                        429 => {
                            self.counters.throttles.fetch_add(1, Ordering::Relaxed);
                            let server_wait = vendor.throttle_wait(&headers, &details);
                            let wait = self.retry.delay(attempts - 1, server_wait, &mut rng);
                            // Hold every caller of this endpoint, not only this one.
                            request
                                .limiter
                                .pause_until(Instant::now() + server_wait.unwrap_or(wait))
                                .await;
                            (
                                wait,
                                Error::RateLimited {
                                    service,
                                    retry_after: server_wait.unwrap_or(wait),
                                },
                            )
                        }
                        s if s >= 500 => {
                            let error = Error::Upstream {
                                service,
                                status,
                                detail: summary(&details),
                            };
                            let may_replay = request.replay == Replay::Safe || status == 503;
                            if !(vendor.is_transient(status) && may_replay) {
                                return Err(error);
                            }
                            (self.retry.delay(attempts - 1, None, &mut rng), error)
                        }
                        _ => {
                            return Err(Error::Rejected {
                                service,
                                status,
                                errors: details,
                            });
                        }
                    }
                }
                Outcome::Failed {
                    error,
                    surely_not_received,
                } => {
                    tracing::debug!(%service, method = %request.method, %path, attempt = attempts, timeout = error.is_timeout(), connect = error.is_connect(), "no answer");
                    if error.is_timeout() && cut_by_deadline {
                        return Err(Error::DeadlineExceeded { service });
                    }
                    let typed = Error::Transport {
                        service,
                        detail: transport_detail(&error, timeout),
                    };
                    if !(surely_not_received || request.replay == Replay::Safe) {
                        return Err(typed);
                    }
                    (self.retry.delay(attempts - 1, None, &mut rng), typed)
                }
            };
            if !self
                .retry
                .may_retry(attempts, wait, self.request_timeout, deadline)
            {
                return Err(error);
            }
            tracing::debug!(%service, method = %request.method, %path, attempt = attempts, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(
        &self,
        request: &Request<'_>,
        authorization: HeaderValue,
        timeout: Duration,
    ) -> Outcome {
        let mut builder = self
            .http
            .request(request.method.clone(), request.url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .timeout(timeout);
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
            if let Some(content_type) = request.content_type {
                builder = builder.header(reqwest::header::CONTENT_TYPE, content_type);
            }
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(error) => {
                let surely_not_received = error.is_connect();
                return Outcome::Failed {
                    error,
                    surely_not_received,
                };
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => Outcome::Answer {
                status,
                headers,
                body,
            },
            // The vendor answered, so it got the request.
            Err(error) => Outcome::Failed {
                error,
                surely_not_received: false,
            },
        }
    }
}

/// A header value holding a credential: marked sensitive so it is never printed.
pub(crate) fn credential_header(scheme: &str, value: &str, key_name: &str) -> Result<HeaderValue> {
    if value.trim().is_empty() {
        return Err(Error::Secret(format!(
            "the bridge secret has no `{key_name}`"
        )));
    }
    let mut header =
        HeaderValue::from_str(&format!("{scheme} {}", value.trim())).map_err(|_| {
            Error::Secret(format!(
                "`{key_name}` holds characters an HTTP header cannot carry"
            ))
        })?;
    header.set_sensitive(true);
    Ok(header)
}

/// The start of a body as text, for an error that has no structured detail.
pub(crate) fn truncated_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() <= MAX_DETAIL_CHARS {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(MAX_DETAIL_CHARS).collect();
    cut.push_str("...");
    cut
}

/// One detail holding the body text, for a body that is not the vendor's JSON.
pub(crate) fn text_detail(status_hint: &str, body: &[u8]) -> Vec<ApiErrorDetail> {
    let text = truncated_text(body);
    if text.is_empty() {
        return Vec::new();
    }
    vec![ApiErrorDetail {
        code: status_hint.to_string(),
        title: "unstructured error body".into(),
        detail: text,
        pointer: None,
    }]
}

fn summary(details: &[ApiErrorDetail]) -> String {
    if details.is_empty() {
        return "no error detail".into();
    }
    details
        .iter()
        .map(|d| match (d.code.is_empty(), d.detail.is_empty()) {
            (false, false) => format!("{}: {}", d.code, d.detail),
            (true, false) => d.detail.clone(),
            (false, true) => format!("{}: {}", d.code, d.title),
            (true, true) => d.title.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn transport_detail(error: &reqwest::Error, timeout: Duration) -> String {
    // reqwest's Display of a request error names the URL; the URL never holds a secret.
    if error.is_timeout() {
        format!("no answer within {timeout:?}")
    } else if error.is_connect() {
        format!("cannot connect: {}", source_chain(error))
    } else {
        source_chain(error)
    }
}

fn source_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_header_is_sensitive_and_checked() {
        let h = credential_header("Bearer", "tok", "trifft_api_token").unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.to_str().unwrap(), "Bearer tok");
        let e = credential_header("Bearer", " ", "trifft_api_token").unwrap_err();
        assert!(e.to_string().contains("trifft_api_token"), "{e}");
        assert!(credential_header("Bearer", "a\nb", "trifft_api_token").is_err());
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = "x".repeat(2_000);
        let text = truncated_text(body.as_bytes());
        assert_eq!(text.chars().count(), MAX_DETAIL_CHARS + 3);
        assert!(text_detail("502", b"   ").is_empty());
        assert_eq!(
            text_detail("502", b"<html>Bad gateway</html>")[0].detail,
            "<html>Bad gateway</html>"
        );
    }
}
