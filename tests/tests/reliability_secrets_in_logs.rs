//! Secrets in logs: every line all three functions (and the libraries under them) log,
//! at DEBUG and the bridge's own crates at TRACE, through success, duplicates, bad input,
//! 401s, upstream refusals (wrong keys) and injected faults, is captured by a global
//! subscriber; none may hold a secret value (Klaviyo key, TRIFFT token, webhook secrets)
//! or a full e-mail address.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use e2e_tests::reliability::{
    ALL_SECRETS, Body, CUSTOM_SECRET, HOOK_SECRET, api_event, bridge_secrets, call_custom,
    call_webhook, custom_deps, custom_request, small_sandbox, sync_deps, sync_to_the_end,
    to_request, webhook_deps, webhook_request,
};
use loyalty_bridge::Deadline;
use loyalty_bridge::secrets::{EnvSecretSource, SecretSource, SecretString};
use loyalty_bridge::state::MemoryStateStore;
use sandbox::{FaultTarget, Faults};
use serde_json::json;
use standard_sync::{Mode, Trigger, run_sync};

/// Keys the bridge is configured with in the "upstream refuses" scenarios: secrets too.
const WRONG_KLAVIYO_KEY: &str = "pk_wrongkey_for_log_test_9f8e7d";
const WRONG_TRIFFT_TOKEN: &str = "trifft_wrong_token_for_log_test_4c3b";

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One global subscriber (JSON, as in Lambda), so lines logged on any thread or task count.
fn captured() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,loyalty_bridge=trace,klaviyo_webhook=trace,custom_events=trace,standard_sync=trace",
            ))
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        sink
    })
}

/// Every `local@domain.tld` in the text.
fn email_addresses(text: &str) -> Vec<String> {
    let is_local = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    let is_domain = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    let mut found = Vec::new();
    for (at, _) in text.match_indices('@') {
        let local: String = text[..at]
            .chars()
            .rev()
            .take_while(|c| is_local(*c))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let domain: String = text[at + 1..]
            .chars()
            .take_while(|c| is_domain(*c))
            .collect();
        let domain = domain.trim_end_matches('.');
        let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
            !host.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
        });
        if !local.is_empty() && tld_ok {
            found.push(format!("{local}@{domain}"));
        }
    }
    found
}

#[test]
fn the_email_finder_finds_addresses() {
    assert_eq!(
        email_addresses(
            r#"{"to":"member1@example.com", "x":"a@b", "y": "j.doe+1@mail.example.org."}"#
        ),
        ["member1@example.com", "j.doe+1@mail.example.org"]
    );
    // Masked forms and bare hosts are not full addresses.
    assert!(email_addresses("m***@example.com, @example.com, a@localhost").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_email_address_is_ever_logged() {
    let sink = captured();
    let faults = Faults {
        seed: 9,
        target: FaultTarget::Both,
        error_rate: 0.15,
        throttle_rate: 0.05,
        drop_rate: 0.05,
        ..Faults::none()
    };
    let sb = small_sandbox(51, 30, 80, Faults::none()).await;
    let members = sb.trifft().members.clone();
    let member = members[0].id.clone();

    // klaviyo-webhook: success, duplicate, bad input, 401s, faults, TRIFFT refusing our token.
    let webhook = webhook_deps(&sb, Arc::new(MemoryStateStore::new()));
    let body = json!({"action": "credit_points", "member": {"trifft_id": member}, "points": 5, "reason": "logs"});
    assert_eq!(
        call_webhook(&webhook, webhook_request(&body)).await.status,
        202
    );
    assert_eq!(
        call_webhook(&webhook, webhook_request(&body)).await.status,
        200
    );
    let bad = json!({"action": "credit_points", "member": {"trifft_id": "{{ person.email }}"}, "points": 5});
    assert_eq!(
        call_webhook(&webhook, webhook_request(&bad)).await.status,
        422
    );
    for secret in ["wrong", &HOOK_SECRET[1..], &format!("{HOOK_SECRET} ")] {
        let event = api_event(
            "/klaviyo/webhook",
            "POST",
            &[("x-bridge-secret", secret)],
            &Body::Text(body.to_string()),
        );
        assert_eq!(
            call_webhook(&webhook, to_request(&event).unwrap())
                .await
                .status,
            401
        );
    }
    let event = api_event(
        "/klaviyo/webhook",
        "POST",
        &[],
        &Body::Text(body.to_string()),
    );
    assert_eq!(
        call_webhook(&webhook, to_request(&event).unwrap())
            .await
            .status,
        401
    );
    sb.set_faults(faults.clone());
    for i in 0..6 {
        let body = json!({"action": "debit_points", "member": {"trifft_id": members[i + 1].id}, "points": 1});
        call_webhook(&webhook, webhook_request(&body)).await;
    }
    sb.set_faults(Faults::none());
    let mut refused = webhook_deps(&sb, Arc::new(MemoryStateStore::new()));
    let mut secrets = bridge_secrets();
    secrets.trifft_api_token = Some(SecretString::new(WRONG_TRIFFT_TOKEN));
    let wrong_secrets = Arc::new(EnvSecretSource::from_secrets(secrets));
    refused.trifft = Arc::new(e2e_tests::reliability::trifft_client(
        &sb,
        wrong_secrets.clone(),
    ));
    let answer = call_webhook(&refused, webhook_request(&body)).await;
    assert!(answer.status >= 400, "{answer:?}");

    // custom-events: success (with an e-mail identity), 401s, faults, Klaviyo refusing our key.
    let custom = custom_deps(&sb);
    let event = |id: &str| {
        json!({"event": "challenge_completed", "id": id, "occurred_at": chrono::Utc::now().to_rfc3339(),
               "member": {"id": member, "email": "secret.person@example.com", "phone": "+4915112345001"},
               "challenge": {"id": "c1", "name": "n"}, "reward": {"points": 1, "value": "1.00", "currency": "EUR"}})
    };
    assert_eq!(
        call_custom(&custom, custom_request(&event("logs-1")))
            .await
            .status,
        202
    );
    let no_id = json!({"event": "challenge_completed", "id": "logs-x", "member": {"email": "not-valid@@example.com"}});
    assert!(call_custom(&custom, custom_request(&no_id)).await.status >= 400);
    for secret in ["nope", &CUSTOM_SECRET[2..]] {
        let e = api_event(
            "/trifft/custom-events",
            "POST",
            &[
                ("x-trifft-secret", secret),
                ("authorization", "Basic dHJpZmZ0Om5vcGU="),
            ],
            &Body::Text(event("logs-2").to_string()),
        );
        assert_eq!(
            call_custom(&custom, to_request(&e).unwrap()).await.status,
            401
        );
    }
    sb.set_faults(faults.clone());
    for i in 0..6 {
        call_custom(&custom, custom_request(&event(&format!("logs-f-{i}")))).await;
    }
    sb.set_faults(Faults::none());
    let mut secrets = bridge_secrets();
    secrets.klaviyo_private_key = Some(SecretString::new(WRONG_KLAVIYO_KEY));
    let wrong_key = Arc::new(EnvSecretSource::from_secrets(secrets));
    let mut refused_custom = custom_deps(&sb);
    refused_custom.klaviyo = Arc::new(e2e_tests::reliability::klaviyo_client(
        &sb,
        wrong_key.clone(),
    ));
    refused_custom.secrets = wrong_key.clone();
    let answer = call_custom(&refused_custom, custom_request(&event("logs-3"))).await;
    assert!(answer.status >= 400, "{answer:?}");

    // standard-sync: a full run under faults, then runs whose keys are refused.
    sb.set_faults(faults);
    let sync = sync_deps(&sb, Arc::new(MemoryStateStore::new()));
    sync_to_the_end(&sync, Duration::from_secs(60), 10).await;
    sb.set_faults(Faults::none());
    let mut wrong = sync_deps(&sb, Arc::new(MemoryStateStore::new()));
    wrong.klaviyo = Arc::new(e2e_tests::reliability::klaviyo_client(&sb, wrong_key));
    let run = run_sync(
        &wrong,
        Trigger::direct(Mode::Backfill),
        Deadline::after(Duration::from_secs(20)),
    )
    .await;
    assert!(
        run.is_err()
            || !run.as_ref().unwrap().completed
            || run.as_ref().unwrap().profiles_failed > 0,
        "{run:?}"
    );
    let mut wrong = sync_deps(&sb, Arc::new(MemoryStateStore::new()));
    wrong.trifft = Arc::new(e2e_tests::reliability::trifft_client(&sb, wrong_secrets));
    assert!(
        run_sync(
            &wrong,
            Trigger::direct(Mode::Backfill),
            Deadline::after(Duration::from_secs(20))
        )
        .await
        .is_err()
    );

    // A secret document that does not parse: the error names no value.
    let broken = format!("{{\"klaviyo_private_key\": \"{KLAVIYO_KEY_IN_BROKEN}\", ");
    match EnvSecretSource::new(&broken) {
        Err(e) => tracing::error!(error = %e, "cannot read the bridge secret"),
        Ok(source) => match source.get().await {
            Err(e) => tracing::error!(error = %e, "cannot read the bridge secret"),
            Ok(s) => tracing::debug!(secrets = ?s, "parsed"),
        },
    }
    sb.stop().await;

    let logs = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    let lines = logs.lines().count();
    // The capture works: the scenarios' own lines are there.
    for expected in [
        "unauthorized",
        "batch queued in TRIFFT",
        "duplicate delivery",
        "refused input",
    ] {
        assert!(
            logs.contains(expected),
            "{expected:?} not among {lines} captured lines"
        );
    }
    let secrets = ALL_SECRETS.iter().copied().chain([
        WRONG_KLAVIYO_KEY,
        WRONG_TRIFFT_TOKEN,
        KLAVIYO_KEY_IN_BROKEN,
    ]);
    let leaked: Vec<&str> = secrets.filter(|s| logs.contains(s)).collect();
    let mut emails: Vec<String> = email_addresses(&logs);
    for m in &members {
        if let Some(email) = &m.email
            && logs.contains(email.as_str())
        {
            emails.push(email.clone());
        }
    }
    emails.sort();
    emails.dedup();
    eprintln!(
        "secrets in logs: {lines} lines ({} bytes) captured, {} secret values leaked, {} e-mail addresses",
        logs.len(),
        leaked.len(),
        emails.len()
    );
    let show = |needle: &str| {
        logs.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .chars()
            .take(400)
            .collect::<String>()
    };
    assert!(
        leaked.is_empty(),
        "secret values in the logs: {:?}",
        leaked.iter().map(|s| show(s)).collect::<Vec<_>>()
    );
    assert!(
        emails.is_empty(),
        "e-mail addresses in the logs: {emails:?}, e.g. {}",
        show(&emails[0])
    );
}

const KLAVIYO_KEY_IN_BROKEN: &str = "pk_in_a_broken_secret_document_77";
