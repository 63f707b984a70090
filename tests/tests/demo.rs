//! `sandbox demo` in-process: every sample in events/ gets its documented outcome, the
//! numbers of the report agree with what the emulators hold, and the seeded ids the demo
//! suggests for the webhook samples make their actions apply in TRIFFT.

use std::path::{Path, PathBuf};

use sandbox::demo::{self, DemoOptions, DemoReport};

fn sample_names(function: &str) -> Vec<String> {
    let dir = demo::default_events_dir().join(function);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "expected.json")
        .collect();
    names.sort();
    names
}

fn failed_checks(report: &DemoReport) -> Vec<String> {
    report
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| {
            format!(
                "{} {}: expected {}, got {}",
                c.function, c.subject, c.expected, c.actual
            )
        })
        .collect()
}

#[tokio::test]
async fn every_sample_passes_and_the_numbers_agree_with_the_emulators() {
    let report = demo::run(DemoOptions::default())
        .await
        .expect("the demo runs");
    assert_eq!(report.failed(), 0, "{:#?}", failed_checks(&report));

    // Every sample file was run and checked against expected.json.
    for function in [
        demo::KLAVIYO_WEBHOOK,
        demo::STANDARD_SYNC,
        demo::CUSTOM_EVENTS,
    ] {
        for name in sample_names(function) {
            assert!(
                report
                    .checks
                    .iter()
                    .any(|c| c.function == function && c.subject == name),
                "{function}/{name} has no check"
            );
        }
    }
    assert_eq!(
        report.webhook.len(),
        sample_names(demo::KLAVIYO_WEBHOOK).len()
    );

    // klaviyo-webhook: one TRIFFT batch per 202, none otherwise; the repeat sends nothing.
    for w in &report.webhook {
        assert_eq!(w.batches, usize::from(w.status == 202), "{}", w.sample);
        assert_eq!(w.items.is_empty(), w.status != 202, "{}", w.sample);
    }
    let repeat = report
        .webhook
        .iter()
        .find(|w| w.sample == "duplicate_2_repeat.json")
        .unwrap();
    assert_eq!((repeat.status, repeat.batches), (200, 0));
    assert_eq!(repeat.body["status"], "duplicate");

    // standard-sync: the refused trigger reached nobody; each run's events are in Klaviyo.
    let refused = &report.sync[0];
    assert_eq!(refused.sample, "not-a-schedule.json");
    let failure = refused.outcome.as_ref().unwrap_err();
    assert_eq!(failure.error_type, "NonRetryable");
    assert_eq!(
        refused.trifft_requests + refused.klaviyo_requests.values().sum::<u64>(),
        0
    );
    let backfill = report
        .sync
        .iter()
        .find(|s| s.sample == "scheduler-backfill.json")
        .unwrap();
    let summary = backfill.outcome.as_ref().unwrap();
    assert_eq!(summary.members, report.members as u64);
    // The seeded events, and any the webhook samples caused in TRIFFT.
    assert!(summary.events_read >= report.events as u64);
    assert_eq!(
        summary.events_sent + summary.events_skipped,
        summary.events_read
    );
    assert_eq!(
        backfill.klaviyo_events_added as u64 + backfill.klaviyo_duplicates_dropped,
        summary.events_sent
    );
    assert_eq!(
        backfill.klaviyo_profiles_total as u64,
        summary.profiles_sent
    );
    assert_eq!(
        summary.profiles_sent + summary.members_without_identifier + summary.profiles_failed,
        summary.members
    );
    let total_sent: u64 = report
        .sync
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok())
        .map(|s| s.events_sent)
        .sum();
    let total_landed: u64 = report
        .sync
        .iter()
        .map(|s| s.klaviyo_events_added as u64 + s.klaviyo_duplicates_dropped)
        .sum();
    assert_eq!(total_sent, total_landed);

    // The last run follows the TRIFFT activity and carries exactly it.
    let last = report.sync.last().unwrap();
    assert!(last.note.is_some());
    let summary = last.outcome.as_ref().unwrap();
    let (changed, appended) = report.activity;
    assert_eq!(summary.members, changed as u64);
    assert_eq!(summary.events_read, (changed + appended) as u64);
    assert_eq!(last.klaviyo_events_added as u64, summary.events_sent);
    assert_eq!(
        last.klaviyo_profiles_added, 0,
        "changed members already exist"
    );

    // custom-events: the answer's events are the ones Klaviyo got; the re-delivery adds none.
    for c in &report.custom {
        if c.status == 202 && c.note.is_none() {
            let answered: Vec<&str> = c.body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["unique_id"].as_str().unwrap())
                .collect();
            let stored: Vec<&str> = c
                .klaviyo_events
                .iter()
                .map(|(_, _, id)| id.as_str())
                .collect();
            assert_eq!(answered, stored, "{}", c.sample);
        } else {
            assert!(c.klaviyo_events.is_empty(), "{}", c.sample);
        }
    }
    let redelivery = report.custom.last().unwrap();
    assert!(redelivery.note.is_some());
    assert_eq!(redelivery.status, 202);
    assert!(redelivery.klaviyo_duplicates_dropped >= 1);
    let ignored = report
        .custom
        .iter()
        .find(|c| c.sample == "bridge-caused.json")
        .unwrap();
    assert_eq!(ignored.body["status"], "ignored");

    let text = report.render();
    assert!(
        text.trim_end().ends_with(&format!(
            "demo: {} checks passed, 0 failed",
            report.passed()
        )),
        "{text}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn the_webhook_samples_act_on_seeded_members() {
    let report = demo::run(DemoOptions::default())
        .await
        .expect("the demo runs");
    assert_eq!(report.failed(), 0, "{:#?}", failed_checks(&report));
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    for w in report.webhook.iter().filter(|w| w.status == 202) {
        for item in &w.items {
            assert!(item.applied, "{}: {item:?}", w.sample);
        }
    }
    let change = |sample: &str| {
        report
            .webhook
            .iter()
            .find(|w| w.sample == sample)
            .unwrap()
            .member_changes
            .clone()
    };
    let points = |line: &str| -> (i64, i64) {
        let tail = line.split(" points ").nth(1).unwrap();
        let (a, b) = tail.split_once(" -> ").unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let (before, after) = points(&change("credit_points.json")[0]);
    assert_eq!(after - before, 50);
    let (before, after) = points(&change("debit_points.json")[0]);
    assert_eq!(before - after, 20);
    // The first sync run after the webhooks carries what they changed in TRIFFT.
    let changes: usize = report.webhook.iter().map(|w| w.member_changes.len()).sum();
    let first_run = report
        .sync
        .iter()
        .find_map(|s| s.outcome.as_ref().ok())
        .unwrap();
    assert_eq!(first_run.mode, standard_sync::Mode::Incremental);
    assert!(first_run.events_sent >= changes as u64, "{changes} changes");
}

/// The samples with one id replaced everywhere in the webhook samples' text.
fn samples_with(dir: &Path, from: &str, to: &str) {
    copy_dir(&demo::default_events_dir(), dir);
    for entry in std::fs::read_dir(dir.join(demo::KLAVIYO_WEBHOOK)).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }
}

#[tokio::test]
async fn an_unknown_sample_member_is_reported_with_a_seeded_one_that_works() {
    const KNOWN: &str = "bf428af0-1c2d-4e5f-91b5-bda6e211aa00";
    const UNKNOWN: &str = "00000000-0000-4000-8000-00000000dead";
    let dir: PathBuf = std::env::temp_dir().join(format!("demo-samples-{}", std::process::id()));
    samples_with(&dir, KNOWN, UNKNOWN);
    let report = demo::run(DemoOptions {
        events_dir: dir.clone(),
        ..DemoOptions::default()
    })
    .await
    .expect("the demo runs");
    std::fs::remove_dir_all(&dir).unwrap();
    // Statuses do not depend on TRIFFT's asynchronous outcome: every check still passes.
    assert_eq!(report.failed(), 0, "{:#?}", failed_checks(&report));
    let credit = report
        .webhook
        .iter()
        .find(|w| w.sample == "credit_points.json")
        .unwrap();
    assert_eq!(
        credit.items[0].reason.as_deref(),
        Some(format!("unknown member {UNKNOWN}").as_str())
    );
    assert_eq!(report.mismatches.len(), 1, "{:#?}", report.mismatches);
    let mismatch = &report.mismatches[0];
    assert_eq!(
        (mismatch.kind, mismatch.sample_id.as_str()),
        ("member", UNKNOWN)
    );
    assert!(mismatch.samples.iter().any(|s| s == "debit_points.json"));
    let seeded = mismatch
        .suggestion
        .as_deref()
        .and_then(|s| s.split_whitespace().next())
        .expect("a suggestion")
        .to_string();

    samples_with(&dir, KNOWN, &seeded);
    let report = demo::run(DemoOptions {
        events_dir: dir.clone(),
        ..DemoOptions::default()
    })
    .await
    .expect("the demo runs");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(report.mismatches.is_empty(), "{:#?}", report.mismatches);
    for w in report.webhook.iter().filter(|w| w.status == 202) {
        for item in &w.items {
            // The suggestion is in every segment the samples remove and in none they add.
            assert!(
                item.applied && (item.reason.is_none() || !item.uri.contains(&seeded)),
                "{}: {item:?}",
                w.sample
            );
        }
    }
}
