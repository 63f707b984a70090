//! standard-sync's checkpoint in DynamoDB (moto, through the real SDK): a run cut off by
//! its deadline resumes from the stored checkpoint, and a second concurrent run is stopped
//! by the conditional write before it sends anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::moto;
use loyalty_bridge::klaviyo::{KlaviyoClient, KlaviyoSettings};
use loyalty_bridge::secrets::EnvSecretSource;
use loyalty_bridge::state::{Claim, DynamoDbStateStore, StateStore, StoredCheckpoint};
use loyalty_bridge::trifft::{TrifftClient, TrifftSettings};
use loyalty_bridge::{Deadline, Error};
use sandbox::{KlaviyoRates, Sandbox, SandboxConfig};
use standard_sync::{Deps, Mode, SyncSettings, Trigger, run_sync};

/// Lets each load of the checkpoint return only when two loads have happened.
struct BothReadFirst {
    inner: Arc<dyn StateStore>,
    barrier: tokio::sync::Barrier,
}

#[async_trait::async_trait]
impl StateStore for BothReadFirst {
    async fn claim(
        &self,
        key: &str,
        until: chrono::DateTime<chrono::Utc>,
    ) -> loyalty_bridge::Result<Claim> {
        self.inner.claim(key, until).await
    }
    async fn complete(&self, key: &str, outcome: &str) -> loyalty_bridge::Result<()> {
        self.inner.complete(key, outcome).await
    }
    async fn release(&self, key: &str) -> loyalty_bridge::Result<()> {
        self.inner.release(key).await
    }
    async fn load_checkpoint(
        &self,
        name: &str,
    ) -> loyalty_bridge::Result<Option<StoredCheckpoint>> {
        let loaded = self.inner.load_checkpoint(name).await;
        self.barrier.wait().await;
        loaded
    }
    async fn save_checkpoint(
        &self,
        name: &str,
        body: &serde_json::Value,
        expected: Option<u64>,
    ) -> loyalty_bridge::Result<u64> {
        self.inner.save_checkpoint(name, body, expected).await
    }
}

async fn setup(members: usize, events: usize) -> (Sandbox, Arc<dyn StateStore>, Deps) {
    let sandbox = Sandbox::start(SandboxConfig {
        seed: 77,
        members,
        events,
        klaviyo_rates: KlaviyoRates::Real,
        trifft_rate: (500, Duration::from_secs(10)),
        ..Default::default()
    })
    .await
    .expect("sandbox starts");
    let table = moto::unique_name("standard-sync");
    moto::create_table(&table).await;
    let state: Arc<dyn StateStore> =
        Arc::new(DynamoDbStateStore::new(moto::dynamodb().await, table));
    let secrets = Arc::new(
        EnvSecretSource::new(
            r#"{"klaviyo_private_key": "pk_sandbox_0123456789abcdef", "trifft_api_token": "trifft_sandbox_token"}"#,
        )
        .unwrap(),
    );
    let trifft = TrifftClient::new(
        TrifftSettings {
            base_url: sandbox.trifft_url(),
            rate: (450, Duration::from_secs(10)),
            ..Default::default()
        },
        secrets.clone(),
    )
    .unwrap();
    let klaviyo = KlaviyoClient::new(
        KlaviyoSettings {
            base_url: sandbox.klaviyo_url(),
            ..Default::default()
        },
        secrets,
    )
    .unwrap();
    let deps = Deps {
        trifft: Arc::new(trifft),
        klaviyo: Arc::new(klaviyo),
        state: state.clone(),
        settings: SyncSettings {
            page_size: 500,
            safety_margin: Duration::from_secs(2),
            import_poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
    };
    (sandbox, state, deps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_run_resumes_from_the_dynamodb_checkpoint() {
    // Sized so one 3.5 s budget (1.25 s of work after the 2 s margin) cannot hold it all.
    let (sandbox, state, deps) = setup(3_000, 40_000).await;
    let mut runs = Vec::new();
    loop {
        let summary = run_sync(
            &deps,
            Trigger::direct(Mode::Backfill),
            Deadline::after(Duration::from_millis(3_500)),
        )
        .await
        .unwrap();
        let stored = state
            .load_checkpoint("standard-sync-backfill")
            .await
            .unwrap()
            .expect("checkpoint saved");
        // The summary reports exactly what DynamoDB holds.
        assert_eq!(summary.checkpoint.as_ref(), Some(&stored.body));
        let done = summary.completed;
        runs.push((summary, stored.version));
        if done {
            break;
        }
        assert!(runs.len() < 20, "not complete after 20 runs");
    }
    eprintln!("cut-off runs: {}", runs.len());
    assert!(
        runs.len() >= 2,
        "the 3.5 s budget was meant to cut the first run off"
    );
    let versions: Vec<u64> = runs.iter().map(|(_, v)| *v).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "the checkpoint moved on every run: {versions:?}"
    );

    let (trifft, klaviyo) = (sandbox.trifft(), sandbox.klaviyo());
    let deliverable = trifft
        .events
        .iter()
        .filter(|e| !e.member_id.is_empty())
        .count();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for event in &klaviyo.events {
        *seen
            .entry(event.unique_id.as_deref().unwrap_or(""))
            .or_default() += 1;
    }
    assert_eq!(seen.len(), deliverable, "every event");
    assert!(seen.values().all(|n| *n == 1), "exactly once");
    assert!(
        trifft
            .events
            .iter()
            .filter(|e| !e.member_id.is_empty())
            .all(|e| seen.contains_key(e.id.as_str()))
    );
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_run_stops_at_the_conditional_write() {
    let (sandbox, state, deps) = setup(200, 1_000).await;
    // Another run already moved the checkpoint past the version this run will read:
    // simulate it by saving between this run's load and its first write.
    let first = run_sync(
        &deps,
        Trigger::direct(Mode::Incremental),
        Deadline::after(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert!(first.completed);
    let stored = state
        .load_checkpoint("standard-sync")
        .await
        .unwrap()
        .unwrap();
    // A stale writer that read the version before the first run.
    let stale = state
        .save_checkpoint(
            "standard-sync",
            &stored.body,
            Some(stored.version.saturating_sub(1)),
        )
        .await;
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");

    // Two runs at once, both having read the same version (a barrier after the read):
    // exactly one may move the checkpoint; the other ends with Conflict before sending.
    let racing = Deps {
        trifft: deps.trifft.clone(),
        klaviyo: deps.klaviyo.clone(),
        state: Arc::new(BothReadFirst {
            inner: state.clone(),
            barrier: tokio::sync::Barrier::new(2),
        }),
        settings: deps.settings.clone(),
    };
    let requests_before = sandbox.klaviyo().request_counts.values().sum::<u64>();
    let (a, b) = tokio::join!(
        run_sync(
            &racing,
            Trigger::direct(Mode::Incremental),
            Deadline::after(Duration::from_secs(60))
        ),
        run_sync(
            &racing,
            Trigger::direct(Mode::Incremental),
            Deadline::after(Duration::from_secs(60))
        ),
    );
    let conflicts = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(Error::Conflict(_))))
        .count();
    let oks = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!((oks, conflicts), (1, 1), "{a:?} / {b:?}");
    // Nothing new in TRIFFT: the winner had nothing to send, the loser sent nothing.
    assert_eq!(
        sandbox.klaviyo().request_counts.values().sum::<u64>(),
        requests_before
    );
    sandbox.stop().await;
}
