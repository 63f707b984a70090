//! The demo report as aligned plain text.

use std::fmt::Write as _;

use serde_json::Value;

use super::{CustomResult, DemoReport, SyncResult, WebhookResult};

/// Wide enough for every sample name in events/.
const NAME: usize = 30;

fn webhook_meaning(status: u16) -> &'static str {
    match status {
        200 => "duplicate: already handled, no second batch",
        202 => "accepted: one batch queued in TRIFFT",
        400 => "malformed: Klaviyo will not retry",
        401 => "unauthorized: nothing read or sent",
        405 => "not a POST",
        413 => "too large: refused before parsing",
        422 => "refused input: Klaviyo will not retry, the flow log shows why",
        503 => "unavailable: Klaviyo retries later",
        _ => "unexpected",
    }
}

fn custom_meaning(status: u16) -> &'static str {
    match status {
        200 => "ignored: nothing sent to Klaviyo",
        202 => "sent to Klaviyo",
        400 => "malformed: not a JSON event",
        401 => "unauthorized: nothing read or sent",
        405 => "not a POST",
        413 => "too large",
        422 => "cannot be mapped or Klaviyo refused it",
        503 => "unavailable: the sender may retry",
        _ => "unexpected",
    }
}

fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    match error.get("field").and_then(Value::as_str) {
        Some(field) if !message.contains(field) => Some(format!("{message} (field {field})")),
        _ => Some(message.to_string()),
    }
}

fn warnings(body: &Value) -> Vec<String> {
    body.get("warnings")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|w| match w {
                    Value::String(s) => s.clone(),
                    other => match (
                        other.get("field").and_then(Value::as_str),
                        other.get("message").and_then(Value::as_str),
                    ) {
                        (Some(field), Some(message)) => format!("{field}: {message}"),
                        (None, Some(message)) => message.to_string(),
                        _ => other.to_string(),
                    },
                })
                .collect()
        })
        .unwrap_or_default()
}

fn webhook(out: &mut String, w: &WebhookResult) {
    let _ = writeln!(
        out,
        "  {:<NAME$} {}  {}",
        w.sample,
        w.status,
        webhook_meaning(w.status)
    );
    if let Some(message) = error_message(&w.body) {
        let _ = writeln!(out, "      message: {message}");
    }
    if w.status == 200
        && let Some(key) = w.body.get("idempotency_key").and_then(Value::as_str)
    {
        let _ = writeln!(out, "      idempotency_key {key}: no batch sent");
    }
    for warning in warnings(&w.body) {
        let _ = writeln!(out, "      warning: {warning}");
    }
    for item in &w.items {
        let outcome = match (item.applied, &item.reason) {
            (true, None) => "applied".to_string(),
            (true, Some(note)) => format!("applied ({note})"),
            (false, reason) => format!("failed: {}", reason.as_deref().unwrap_or("?")),
        };
        let _ = writeln!(out, "      {:<6} {}  {outcome}", item.method, item.uri);
    }
    for change in &w.member_changes {
        let _ = writeln!(out, "      {change}");
    }
}

fn sync(out: &mut String, s: &SyncResult) {
    match &s.outcome {
        Err(f) => {
            let _ = writeln!(
                out,
                "  {:<NAME$} error {}: {}",
                s.sample, f.error_type, f.message
            );
            let calls = s.trifft_requests + s.klaviyo_requests.values().sum::<u64>();
            let _ = writeln!(out, "      upstream calls: {calls}");
        }
        Ok(summary) => {
            let _ = writeln!(
                out,
                "  {:<NAME$} {} run, execution {}",
                s.sample,
                summary.mode.as_str(),
                summary.execution_id.as_deref().unwrap_or("none")
            );
            if let Some(note) = &s.note {
                let _ = writeln!(out, "      ({note})");
            }
            let _ = writeln!(
                out,
                "      members {:>5}   profiles sent {:>5}  failed {}  unverified {}  no identifier {}",
                summary.members,
                summary.profiles_sent,
                summary.profiles_failed,
                summary.profiles_unverified,
                summary.members_without_identifier
            );
            let _ = writeln!(
                out,
                "      events read {:>5}   sent {:>5}  skipped {}  repeats dropped {}",
                summary.events_read,
                summary.events_sent,
                summary.events_skipped,
                summary.duplicates_dropped
            );
            let _ = writeln!(
                out,
                "      jobs: {} event, {} profile   requests: Klaviyo {}, TRIFFT {}   retries {}  throttles {}  {} ms",
                summary.event_jobs,
                summary.profile_jobs,
                summary.klaviyo_requests,
                summary.trifft_requests,
                summary.retries,
                summary.throttles,
                summary.duration_ms
            );
            for (route, n) in &s.klaviyo_requests {
                let _ = writeln!(out, "        {route:<48} {n:>4}");
            }
            let _ = writeln!(
                out,
                "      Klaviyo now: +{} events ({} repeats dropped by unique_id), +{} profiles ({} in all)",
                s.klaviyo_events_added,
                s.klaviyo_duplicates_dropped,
                s.klaviyo_profiles_added,
                s.klaviyo_profiles_total
            );
            let checkpoint = summary
                .checkpoint
                .as_ref()
                .map_or_else(|| "none".to_string(), Value::to_string);
            let state = if summary.completed {
                "feeds read to the end".to_string()
            } else {
                format!(
                    "stopped: {}",
                    summary.stopped_because.as_deref().unwrap_or("?")
                )
            };
            let _ = writeln!(out, "      {state}; checkpoint {checkpoint}");
        }
    }
}

fn custom(out: &mut String, c: &CustomResult) {
    let _ = writeln!(
        out,
        "  {:<NAME$} {}  {}",
        c.sample,
        c.status,
        custom_meaning(c.status)
    );
    if let Some(note) = &c.note {
        let _ = writeln!(out, "      ({note})");
    }
    if let Some(message) = error_message(&c.body) {
        let _ = writeln!(out, "      message: {message}");
    }
    if c.status == 200
        && let Some(reason) = c.body.get("reason").and_then(Value::as_str)
    {
        let _ = writeln!(out, "      reason: {reason}");
    }
    for warning in warnings(&c.body) {
        let _ = writeln!(out, "      warning: {warning}");
    }
    for (metric, identity, unique_id) in &c.klaviyo_events {
        let _ = writeln!(
            out,
            "      event \"{metric}\"  unique_id {unique_id}  profile {identity}"
        );
    }
    if c.klaviyo_duplicates_dropped > 0 {
        let _ = writeln!(
            out,
            "      Klaviyo dropped {} repeat(s) by unique_id",
            c.klaviyo_duplicates_dropped
        );
    }
}

pub(super) fn render(r: &DemoReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sandbox demo: seed {}, {} TRIFFT members, {} activity events, Klaviyo's real rate tiers",
        r.seed, r.members, r.events
    );
    let _ = writeln!(
        out,
        "  Klaviyo emulator {}   TRIFFT emulator {}",
        r.klaviyo_url, r.trifft_url
    );

    let _ = writeln!(
        out,
        "\n== Klaviyo flow requests -> TRIFFT (klaviyo-webhook, {} samples)",
        r.webhook.len()
    );
    for w in &r.webhook {
        webhook(&mut out, w);
    }

    let _ = writeln!(
        out,
        "\n== Standard sync: TRIFFT -> Klaviyo (standard-sync, {} runs)",
        r.sync.len()
    );
    for s in &r.sync {
        sync(&mut out, s);
    }

    let _ = writeln!(
        out,
        "\n== Custom events: TRIFFT -> Klaviyo (custom-events, {} requests)",
        r.custom.len()
    );
    for c in &r.custom {
        custom(&mut out, c);
    }

    if !r.mismatches.is_empty() {
        let _ = writeln!(
            out,
            "\n== Sample ids missing from the seeded TRIFFT data (seed {}, {} members)",
            r.seed, r.members
        );
        for m in &r.mismatches {
            let _ = writeln!(
                out,
                "  {} {} (in {})",
                m.kind,
                m.sample_id,
                m.samples.join(", ")
            );
            if let Some(s) = &m.suggestion {
                let _ = writeln!(out, "      a seeded one that fits: {s}");
            }
        }
    }

    let failed: Vec<_> = r.checks.iter().filter(|c| !c.passed).collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "\n== Failed checks");
        for c in failed {
            let _ = writeln!(
                out,
                "  {} {}: expected {}, got {}",
                c.function, c.subject, c.expected, c.actual
            );
        }
    }
    let _ = writeln!(
        out,
        "\nEverything stopped; the demo took {:.1} s.",
        r.duration.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "demo: {} checks passed, {} failed",
        r.passed(),
        r.failed()
    );
    out
}
