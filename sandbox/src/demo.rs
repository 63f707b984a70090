//! `sandbox demo`: the three bridge functions end to end against the emulators.
//!
//! Both emulators start in-process on free loopback ports with a small seeded data set
//! and Klaviyo's real rate tiers. Each function runs its own Lambda handler with the real
//! shared clients, built from the environment `sandbox serve` prints (sandbox secrets,
//! in-memory state), fed the samples in `events/` as Lambda would deliver them. The
//! report says what each sample did upstream and compares its status with the sample's
//! `expected.json`.
//!
//! ```no_run
//! # async fn run() -> Result<(), sandbox::demo::DemoError> {
//! let report = sandbox::demo::run(sandbox::demo::DemoOptions::default()).await?;
//! print!("{}", report.render());
//! assert_eq!(report.failed(), 0);
//! # Ok(()) }
//! ```

mod invoke;
mod render;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use loyalty_bridge::klaviyo::{KlaviyoClient, KlaviyoSettings};
use loyalty_bridge::secrets::{EnvSecretSource, SANDBOX_SECRETS_VAR, SecretSource};
use loyalty_bridge::state::MemoryStateStore;
use loyalty_bridge::trifft::{TrifftClient, TrifftSettings};

use crate::{KlaviyoRates, KlaviyoSnapshot, Sandbox, SandboxConfig, SandboxError, TrifftSnapshot};
use invoke::FunctionEnv;

/// The header secret of klaviyo-webhook's samples.
pub const HOOK_SECRET: &str = "sandbox-hook-secret";
/// The header secret of custom-events' samples.
pub const CUSTOM_SECRET: &str = "sandbox-custom-secret";
/// The Basic `user:password` of custom-events' basic-auth sample, held as the rotated-out
/// secret so both credentials are accepted.
pub const CUSTOM_BASIC_CREDENTIALS: &str = "trifft:sandbox-basic-secret";

/// The function names (also their directories under `events/`).
pub const KLAVIYO_WEBHOOK: &str = "klaviyo-webhook";
pub const STANDARD_SYNC: &str = "standard-sync";
pub const CUSTOM_EVENTS: &str = "custom-events";

/// How long each invocation may run (Lambda's deadline in the context).
const HTTP_BUDGET: Duration = Duration::from_secs(30);
const SYNC_BUDGET: Duration = Duration::from_secs(60);

/// The `SANDBOX_SECRETS_JSON` every function reads against this sandbox.
pub fn sandbox_secrets_json(config: &SandboxConfig) -> String {
    json!({
        "klaviyo_private_key": config.klaviyo_api_key,
        "trifft_api_token": config.trifft_token,
        "klaviyo_webhook_secret": HOOK_SECRET,
        "custom_events_secret": CUSTOM_SECRET,
        "custom_events_secret_previous": CUSTOM_BASIC_CREDENTIALS,
    })
    .to_string()
}

/// The samples shipped with the repository (`<workspace>/events`).
pub fn default_events_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("events")
}

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    pub members: usize,
    pub events: usize,
    /// Holds `klaviyo-webhook/`, `standard-sync/`, `custom-events/`, each with `expected.json`.
    pub events_dir: PathBuf,
    /// TRIFFT activity between the sync runs: members changed, events appended.
    pub changed_members: usize,
    pub appended_events: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            seed: 1,
            members: 500,
            events: 2_500,
            events_dir: default_events_dir(),
            changed_members: 25,
            appended_events: 100,
        }
    }
}

/// Why the demo could not run at all (a sample that gives the wrong answer is a failed
/// check in the report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{path}: {message}")]
    Samples { path: PathBuf, message: String },
    #[error("cannot set up {function}: {message}")]
    Setup {
        function: &'static str,
        message: String,
    },
}

/// One comparison of what happened with what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The function, e.g. `klaviyo-webhook`.
    pub function: &'static str,
    /// The sample file, or what a consistency check is about.
    pub subject: String,
    pub expected: String,
    pub actual: String,
    pub passed: bool,
}

/// What one batch item became in TRIFFT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    pub method: String,
    pub uri: String,
    pub applied: bool,
    /// Why it failed, or what an applied no-op was.
    pub reason: Option<String>,
}

/// One Klaviyo flow request (a klaviyo-webhook sample).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookResult {
    pub sample: String,
    pub status: u16,
    pub body: Value,
    /// TRIFFT batches this request caused (1 for an accepted request, else 0).
    pub batches: usize,
    pub items: Vec<ItemResult>,
    /// Member changes in TRIFFT, e.g. `member X points 1540 -> 1590`.
    pub member_changes: Vec<String>,
}

/// One standard-sync invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncResult {
    pub sample: String,
    /// A note on why this run is here (e.g. the run after TRIFFT activity).
    pub note: Option<String>,
    pub outcome: Result<standard_sync::SyncSummary, SyncFailure>,
    /// Klaviyo requests by `"METHOD /route"` during the run (the emulator's count).
    pub klaviyo_requests: BTreeMap<String, u64>,
    pub trifft_requests: u64,
    /// Events and profiles the Klaviyo emulator gained, and repeats it dropped by unique_id.
    pub klaviyo_events_added: usize,
    pub klaviyo_duplicates_dropped: u64,
    pub klaviyo_profiles_added: usize,
    pub klaviyo_profiles_total: usize,
}

/// A sync invocation that returned an error (what Lambda reports as the error type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    pub error_type: String,
    pub field: Option<String>,
    pub message: String,
}

/// What one custom-events request became in Klaviyo.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomResult {
    pub sample: String,
    pub note: Option<String>,
    pub status: u16,
    pub body: Value,
    /// New events in the Klaviyo emulator: (metric, profile identity, unique_id).
    pub klaviyo_events: Vec<(String, String, String)>,
    pub klaviyo_duplicates_dropped: u64,
}

/// An id a sample uses that the seeded TRIFFT data lacks, with a seeded replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleMismatch {
    pub samples: Vec<String>,
    pub kind: &'static str,
    pub sample_id: String,
    /// A seeded id that would make the samples' actions apply, and why it fits.
    pub suggestion: Option<String>,
}

/// Everything the demo did, for printing ([`DemoReport::render`]) and for tests.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    pub seed: u64,
    pub members: usize,
    pub events: usize,
    pub klaviyo_url: String,
    pub trifft_url: String,
    pub webhook: Vec<WebhookResult>,
    pub sync: Vec<SyncResult>,
    /// (members changed, events appended) in TRIFFT before the last sync run.
    pub activity: (usize, usize),
    pub custom: Vec<CustomResult>,
    pub mismatches: Vec<SampleMismatch>,
    pub checks: Vec<Check>,
    pub duration: Duration,
}

impl DemoReport {
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.checks.len() - self.passed()
    }

    /// The plain-text report, ending with `demo: N checks passed, M failed`.
    pub fn render(&self) -> String {
        render::render(self)
    }
}

/// A sample file and its expectation from `expected.json`.
struct Sample {
    name: String,
    text: String,
    expected: Value,
}

fn samples_error(path: &Path, message: impl Into<String>) -> DemoError {
    DemoError::Samples {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The samples of one function, in file-name order, and the names of sample files that
/// `expected.json` does not mention.
fn load_samples(dir: &Path) -> Result<(Vec<Sample>, Vec<String>), DemoError> {
    let expected_path = dir.join("expected.json");
    let text = std::fs::read_to_string(&expected_path)
        .map_err(|e| samples_error(&expected_path, e.to_string()))?;
    let expected: BTreeMap<String, Value> = serde_json::from_str(&text)
        .map_err(|e| samples_error(&expected_path, format!("not a JSON object: {e}")))?;
    let mut samples = Vec::new();
    for (name, expected) in expected {
        let path = dir.join(&name);
        let text =
            std::fs::read_to_string(&path).map_err(|e| samples_error(&path, e.to_string()))?;
        samples.push(Sample {
            name,
            text,
            expected,
        });
    }
    let entries = std::fs::read_dir(dir).map_err(|e| samples_error(dir, e.to_string()))?;
    let mut unlisted = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| samples_error(dir, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json")
            && name != "expected.json"
            && !samples.iter().any(|s| s.name == name)
        {
            unlisted.push(name);
        }
    }
    unlisted.sort();
    Ok((samples, unlisted))
}

/// The environment `sandbox serve` prints, as one function's process would see it.
fn environment(
    sandbox: &Sandbox,
    config: &SandboxConfig,
    function: &str,
) -> HashMap<String, String> {
    HashMap::from([
        ("KLAVIYO_BASE_URL".to_string(), sandbox.klaviyo_url()),
        ("TRIFFT_BASE_URL".to_string(), sandbox.trifft_url()),
        (
            SANDBOX_SECRETS_VAR.to_string(),
            sandbox_secrets_json(config),
        ),
        ("AWS_LAMBDA_FUNCTION_NAME".to_string(), function.to_string()),
    ])
}

fn setup<T>(function: &'static str, result: loyalty_bridge::Result<T>) -> Result<T, DemoError> {
    result.map_err(|e| DemoError::Setup {
        function,
        message: e.to_string(),
    })
}

/// Each function's dependencies, built as its main.rs builds them (one client per
/// function, as three Lambda functions would have), with in-memory state.
struct Functions {
    webhook: klaviyo_webhook::Deps,
    sync: standard_sync::Deps,
    custom: custom_events::Deps,
}

fn secrets(
    function: &'static str,
    vars: &HashMap<String, String>,
) -> Result<Arc<dyn SecretSource>, DemoError> {
    let json = vars.get(SANDBOX_SECRETS_VAR).map_or("", String::as_str);
    Ok(Arc::new(setup(function, EnvSecretSource::new(json))?))
}

fn functions(sandbox: &Sandbox, config: &SandboxConfig) -> Result<Functions, DemoError> {
    let vars = environment(sandbox, config, KLAVIYO_WEBHOOK);
    let trifft_settings = setup(KLAVIYO_WEBHOOK, TrifftSettings::from_env(&vars))?;
    let settings = setup(
        KLAVIYO_WEBHOOK,
        klaviyo_webhook::WebhookSettings::from_env(&vars),
    )?
    .with_paths(trifft_settings.paths.clone());
    let secrets_webhook = secrets(KLAVIYO_WEBHOOK, &vars)?;
    let webhook = klaviyo_webhook::Deps {
        trifft: Arc::new(setup(
            KLAVIYO_WEBHOOK,
            TrifftClient::new(trifft_settings, secrets_webhook.clone()),
        )?),
        state: Arc::new(MemoryStateStore::new()),
        secrets: secrets_webhook,
        settings,
    };

    let vars = environment(sandbox, config, STANDARD_SYNC);
    let secrets_sync = secrets(STANDARD_SYNC, &vars)?;
    let mut sync_settings = setup(STANDARD_SYNC, standard_sync::SyncSettings::from_env(&vars))?;
    // The emulator finishes import jobs in 200 ms; polling every 2 s would only slow the demo.
    sync_settings.import_poll_interval = Duration::from_millis(200);
    let sync = standard_sync::Deps {
        trifft: Arc::new(setup(
            STANDARD_SYNC,
            TrifftClient::new(
                setup(STANDARD_SYNC, TrifftSettings::from_env(&vars))?,
                secrets_sync.clone(),
            ),
        )?),
        klaviyo: Arc::new(setup(
            STANDARD_SYNC,
            KlaviyoClient::new(
                setup(STANDARD_SYNC, KlaviyoSettings::from_env(&vars))?,
                secrets_sync,
            ),
        )?),
        state: Arc::new(MemoryStateStore::new()),
        settings: sync_settings,
    };

    let vars = environment(sandbox, config, CUSTOM_EVENTS);
    let secrets_custom = secrets(CUSTOM_EVENTS, &vars)?;
    let custom = custom_events::Deps {
        klaviyo: Arc::new(setup(
            CUSTOM_EVENTS,
            KlaviyoClient::new(
                setup(CUSTOM_EVENTS, KlaviyoSettings::from_env(&vars))?,
                secrets_custom.clone(),
            ),
        )?),
        secrets: secrets_custom,
        mapping: Arc::new(setup(CUSTOM_EVENTS, custom_events::load_mapping(&vars))?),
        settings: setup(
            CUSTOM_EVENTS,
            custom_events::CustomEventsSettings::from_env(&vars),
        )?,
    };
    Ok(Functions {
        webhook,
        sync,
        custom,
    })
}

/// Start the emulators, run every sample through its function, stop the emulators
/// (also when something fails), and report.
pub async fn run(options: DemoOptions) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let dirs = [KLAVIYO_WEBHOOK, STANDARD_SYNC, CUSTOM_EVENTS].map(|f| options.events_dir.join(f));
    let webhook_samples = load_samples(&dirs[0])?;
    let sync_samples = load_samples(&dirs[1])?;
    let custom_samples = load_samples(&dirs[2])?;

    let config = SandboxConfig {
        seed: options.seed,
        members: options.members,
        events: options.events,
        klaviyo_rates: KlaviyoRates::Real,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config.clone()).await?;
    let mut demo = Demo {
        sandbox: &sandbox,
        checks: Vec::new(),
        invocations: 0,
    };
    let outcome = async {
        let functions = functions(&sandbox, &config)?;
        let seeded = sandbox.trifft();
        let webhook = demo.webhooks(&functions.webhook, webhook_samples).await?;
        let (sync, activity) = demo.syncs(&functions.sync, sync_samples, &options).await?;
        let custom = demo.custom(&functions.custom, custom_samples).await?;
        Ok::<_, DemoError>((seeded, webhook, sync, activity, custom))
    }
    .await;
    let (klaviyo_url, trifft_url) = (sandbox.klaviyo_url(), sandbox.trifft_url());
    let checks = std::mem::take(&mut demo.checks);
    sandbox.stop().await;
    let (seeded, webhook, sync, activity, custom) = outcome?;
    let mismatches = mismatches(&seeded, &webhook);
    Ok(DemoReport {
        seed: options.seed,
        members: options.members,
        events: options.events,
        klaviyo_url,
        trifft_url,
        webhook,
        sync,
        activity,
        custom,
        mismatches,
        checks,
        duration: started.elapsed(),
    })
}

struct Demo<'a> {
    sandbox: &'a Sandbox,
    checks: Vec<Check>,
    invocations: u64,
}

fn status_of(expected: &Value) -> Option<u16> {
    expected.as_u64().and_then(|s| u16::try_from(s).ok())
}

fn response_json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

impl Demo<'_> {
    fn check(
        &mut self,
        function: &'static str,
        subject: impl Into<String>,
        expected: impl Into<String>,
        actual: impl Into<String>,
        passed: bool,
    ) {
        self.checks.push(Check {
            function,
            subject: subject.into(),
            expected: expected.into(),
            actual: actual.into(),
            passed,
        });
    }

    fn unlisted(&mut self, function: &'static str, unlisted: &[String]) {
        for name in unlisted {
            self.check(function, name, "an entry in expected.json", "none", false);
        }
    }

    fn next_context(
        &mut self,
        env: &FunctionEnv,
        budget: Duration,
    ) -> Result<lambda_runtime::Context, DemoError> {
        self.invocations += 1;
        env.context(self.invocations, budget)
            .map_err(|message| DemoError::Setup {
                function: "the Lambda context",
                message,
            })
    }

    /// One HTTP API invocation: (status, JSON body).
    async fn invoke_http<F, Fut>(
        &mut self,
        env: &FunctionEnv,
        function: &'static str,
        sample: &Sample,
        handler: F,
    ) -> Result<(u16, Value), DemoError>
    where
        F: FnOnce(lambda_http::Request) -> Fut,
        Fut: Future<Output = Result<lambda_http::Response<lambda_http::Body>, lambda_http::Error>>,
    {
        let context = self.next_context(env, HTTP_BUDGET)?;
        let request = match invoke::http_request(&sample.text, context) {
            Ok(request) => request,
            Err(message) => {
                self.check(
                    function,
                    &sample.name,
                    "an API Gateway HTTP API event",
                    message,
                    false,
                );
                return Ok((0, Value::Null));
            }
        };
        match handler(request).await {
            Ok(response) => Ok((
                response.status().as_u16(),
                response_json(response.body().as_ref()),
            )),
            // What the runtime would report as a failed invocation (API Gateway answers 500).
            Err(e) => Ok((500, json!({ "handler_error": e.to_string() }))),
        }
    }

    async fn webhooks(
        &mut self,
        deps: &klaviyo_webhook::Deps,
        (samples, unlisted): (Vec<Sample>, Vec<String>),
    ) -> Result<Vec<WebhookResult>, DemoError> {
        self.unlisted(KLAVIYO_WEBHOOK, &unlisted);
        let env = FunctionEnv::new(KLAVIYO_WEBHOOK, 0x4b57);
        let mut results = Vec::new();
        for sample in samples {
            let before = self.sandbox.trifft();
            let (status, body) = self
                .invoke_http(&env, KLAVIYO_WEBHOOK, &sample, |r| {
                    klaviyo_webhook::handler(deps, r)
                })
                .await?;
            let after = self.sandbox.trifft();
            let batches = after.batches.len() - before.batches.len();
            let items = after
                .outcomes
                .iter()
                .filter(|o| o.batch >= before.batches.len())
                .map(|o| ItemResult {
                    method: o.method.clone(),
                    uri: o.uri.clone(),
                    applied: o.applied,
                    reason: o.reason.clone(),
                })
                .collect();
            let expected = status_of(&sample.expected);
            self.check(
                KLAVIYO_WEBHOOK,
                &sample.name,
                expected.map_or_else(|| sample.expected.to_string(), |s| s.to_string()),
                status.to_string(),
                expected == Some(status),
            );
            // Exactly one TRIFFT batch per accepted request; none for anything else.
            let wanted = usize::from(status == 202);
            self.check(
                KLAVIYO_WEBHOOK,
                format!("{}: TRIFFT batches", sample.name),
                wanted.to_string(),
                batches.to_string(),
                batches == wanted,
            );
            results.push(WebhookResult {
                sample: sample.name,
                status,
                body,
                batches,
                items,
                member_changes: member_changes(&before, &after),
            });
        }
        Ok(results)
    }

    async fn sync_once(
        &mut self,
        deps: &standard_sync::Deps,
        env: &FunctionEnv,
        sample: &Sample,
        note: Option<String>,
    ) -> Result<SyncResult, DemoError> {
        let context = self.next_context(env, SYNC_BUDGET)?;
        let event =
            invoke::json_event(&sample.text, context).map_err(|message| DemoError::Samples {
                path: PathBuf::from(&sample.name),
                message,
            })?;
        let (k0, t0) = (self.sandbox.klaviyo(), self.sandbox.trifft());
        let outcome = standard_sync::handler(deps, event)
            .await
            .map_err(|e| SyncFailure {
                error_type: e.class().as_str().to_string(),
                field: match &e {
                    loyalty_bridge::Error::InvalidInput { field, .. } => Some(field.clone()),
                    _ => None,
                },
                message: e.to_string(),
            });
        let (k1, t1) = (self.sandbox.klaviyo(), self.sandbox.trifft());
        Ok(SyncResult {
            sample: sample.name.clone(),
            note,
            outcome,
            klaviyo_requests: count_delta(&k0, &k1),
            trifft_requests: t1.request_counts.values().sum::<u64>()
                - t0.request_counts.values().sum::<u64>(),
            klaviyo_events_added: k1.events.len() - k0.events.len(),
            klaviyo_duplicates_dropped: k1.duplicates_dropped - k0.duplicates_dropped,
            klaviyo_profiles_added: k1.profiles.len() - k0.profiles.len(),
            klaviyo_profiles_total: k1.profiles.len(),
        })
    }

    fn check_sync(&mut self, deps: &standard_sync::Deps, sample: &Sample, result: &SyncResult) {
        let expected = &sample.expected;
        let wanted = expected
            .get("outcome")
            .and_then(Value::as_str)
            .unwrap_or("?");
        match (&result.outcome, wanted) {
            (Ok(summary), "runs") => {
                let mode = summary.mode.as_str();
                let checkpoint =
                    standard_sync::checkpoint_name(&deps.settings.checkpoint_name, summary.mode);
                let execution_id = summary.execution_id.as_deref().unwrap_or("none");
                let mut fine = summary.completed;
                let mut want = vec!["runs to the end".to_string()];
                let mut got = vec![if summary.completed {
                    "runs to the end".to_string()
                } else {
                    format!(
                        "stopped: {}",
                        summary.stopped_because.as_deref().unwrap_or("?")
                    )
                }];
                for (key, actual) in [
                    ("mode", mode),
                    ("execution_id", execution_id),
                    ("checkpoint", &checkpoint),
                ] {
                    if let Some(value) = expected.get(key).and_then(Value::as_str) {
                        fine &= value == actual;
                        want.push(format!("{key} {value}"));
                        got.push(format!("{key} {actual}"));
                    }
                }
                self.check(
                    STANDARD_SYNC,
                    &sample.name,
                    want.join(", "),
                    got.join(", "),
                    fine,
                );
                // What Klaviyo holds now is what the sync says it sent (repeats of events
                // an earlier run sent are dropped by unique_id, and counted).
                let landed = result.klaviyo_events_added as u64 + result.klaviyo_duplicates_dropped;
                self.check(
                    STANDARD_SYNC,
                    format!("{}: events in Klaviyo", sample.name),
                    format!("{} sent", summary.events_sent),
                    format!(
                        "{} new + {} dropped as repeats",
                        result.klaviyo_events_added, result.klaviyo_duplicates_dropped
                    ),
                    landed == summary.events_sent,
                );
            }
            (Err(failure), "error") => {
                let mut fine = true;
                let mut want = vec!["error".to_string()];
                let mut got = vec!["error".to_string()];
                for (key, actual) in [
                    ("error_type", Some(failure.error_type.as_str())),
                    ("field", failure.field.as_deref()),
                ] {
                    if let Some(value) = expected.get(key).and_then(Value::as_str) {
                        fine &= Some(value) == actual;
                        want.push(format!("{key} {value}"));
                        got.push(format!("{key} {}", actual.unwrap_or("none")));
                    }
                }
                let upstream =
                    result.trifft_requests + result.klaviyo_requests.values().sum::<u64>();
                fine &= upstream == 0;
                want.push("no upstream call".into());
                got.push(format!("{upstream} upstream calls"));
                self.check(
                    STANDARD_SYNC,
                    &sample.name,
                    want.join(", "),
                    got.join(", "),
                    fine,
                );
            }
            (outcome, wanted) => {
                let actual = match outcome {
                    Ok(_) => "runs".to_string(),
                    Err(f) => format!("error {}: {}", f.error_type, f.message),
                };
                self.check(STANDARD_SYNC, &sample.name, wanted, actual, false);
            }
        }
    }

    /// Error samples first (they must change nothing), then incremental runs (the first
    /// carries what the webhooks did in TRIFFT), then backfill (history, with Klaviyo
    /// dropping what the incremental runs sent); then TRIFFT activity and one more
    /// incremental run, which must carry exactly that activity.
    async fn syncs(
        &mut self,
        deps: &standard_sync::Deps,
        (mut samples, unlisted): (Vec<Sample>, Vec<String>),
        options: &DemoOptions,
    ) -> Result<(Vec<SyncResult>, (usize, usize)), DemoError> {
        self.unlisted(STANDARD_SYNC, &unlisted);
        let env = FunctionEnv::new(STANDARD_SYNC, 0x5359);
        let rank = |s: &Sample| match (
            s.expected.get("outcome").and_then(Value::as_str),
            s.expected.get("mode").and_then(Value::as_str),
        ) {
            (Some("error"), _) => 0,
            (_, Some("backfill")) => 2,
            _ => 1,
        };
        samples.sort_by_key(rank);
        let mut results = Vec::new();
        for sample in &samples {
            let result = self.sync_once(deps, &env, sample, None).await?;
            self.check_sync(deps, sample, &result);
            results.push(result);
        }
        let incremental = samples.iter().find(|s| {
            s.expected.get("outcome").and_then(Value::as_str) == Some("runs")
                && s.expected.get("mode").and_then(Value::as_str) == Some("incremental")
        });
        let activity = (options.changed_members, options.appended_events);
        if let Some(sample) = incremental {
            self.sandbox
                .change_members(activity.0, options.seed ^ 0xC4A6);
            self.sandbox
                .append_events(activity.1, options.seed ^ 0xE7E5);
            let note = format!(
                "the next scheduled run, after {} members changed and {} events were added in TRIFFT",
                activity.0, activity.1
            );
            let result = self.sync_once(deps, &env, sample, Some(note)).await?;
            self.check_sync(deps, sample, &result);
            let (members, events_read, sent) = match &result.outcome {
                Ok(s) => (s.members, s.events_read, s.events_sent),
                Err(_) => (0, 0, 0),
            };
            // Each changed member carries one activity event of its change.
            let want = (activity.0 as u64, (activity.0 + activity.1) as u64);
            self.check(
                STANDARD_SYNC,
                "next incremental run: only the changes",
                format!("{} members, {} events read", want.0, want.1),
                format!("{members} members, {events_read} events read, {sent} sent"),
                (members, events_read) == want
                    && result.klaviyo_duplicates_dropped == 0
                    && result.klaviyo_events_added as u64 == sent,
            );
            results.push(result);
        }
        Ok((results, activity))
    }

    async fn custom(
        &mut self,
        deps: &custom_events::Deps,
        (samples, unlisted): (Vec<Sample>, Vec<String>),
    ) -> Result<Vec<CustomResult>, DemoError> {
        self.unlisted(CUSTOM_EVENTS, &unlisted);
        let env = FunctionEnv::new(CUSTOM_EVENTS, 0x4345);
        let mut results = Vec::new();
        for sample in &samples {
            let result = self.custom_once(deps, &env, sample, None).await?;
            let expected = status_of(&sample.expected);
            self.check(
                CUSTOM_EVENTS,
                &sample.name,
                expected.map_or_else(|| sample.expected.to_string(), |s| s.to_string()),
                result.status.to_string(),
                expected == Some(result.status),
            );
            let answered = result
                .body
                .get("events")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let wanted = if result.status == 202 { answered } else { 0 };
            self.check(
                CUSTOM_EVENTS,
                format!("{}: events in Klaviyo", sample.name),
                wanted.to_string(),
                result.klaviyo_events.len().to_string(),
                result.klaviyo_events.len() == wanted,
            );
            results.push(result);
        }
        // TRIFFT re-delivers a webhook it got no 2xx for in time: the same unique_id
        // must not become a second event.
        if let Some(first) = samples.iter().find(|s| status_of(&s.expected) == Some(202)) {
            let note = "re-delivered: Klaviyo drops the repeat by unique_id".to_string();
            let result = self.custom_once(deps, &env, first, Some(note)).await?;
            self.check(
                CUSTOM_EVENTS,
                format!("{} re-delivered", first.name),
                "202, no new event",
                format!(
                    "{}, {} new events ({} dropped as repeats)",
                    result.status,
                    result.klaviyo_events.len(),
                    result.klaviyo_duplicates_dropped
                ),
                result.status == 202 && result.klaviyo_events.is_empty(),
            );
            results.push(result);
        }
        Ok(results)
    }

    async fn custom_once(
        &mut self,
        deps: &custom_events::Deps,
        env: &FunctionEnv,
        sample: &Sample,
        note: Option<String>,
    ) -> Result<CustomResult, DemoError> {
        let before = self.sandbox.klaviyo();
        let (status, body) = self
            .invoke_http(env, CUSTOM_EVENTS, sample, |r| {
                custom_events::handler(deps, r)
            })
            .await?;
        let after = self.sandbox.klaviyo();
        let klaviyo_events = after.events[before.events.len().min(after.events.len())..]
            .iter()
            .map(|e| {
                let identity = [
                    e.external_id.as_ref().map(|v| format!("external_id {v}")),
                    e.email.as_ref().map(|v| format!("email {v}")),
                    e.phone_number.as_ref().map(|v| format!("phone {v}")),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
                (
                    e.metric.clone(),
                    identity,
                    e.unique_id.clone().unwrap_or_default(),
                )
            })
            .collect();
        Ok(CustomResult {
            sample: sample.name.clone(),
            note,
            status,
            body,
            klaviyo_events,
            klaviyo_duplicates_dropped: after.duplicates_dropped - before.duplicates_dropped,
        })
    }
}

fn count_delta(before: &KlaviyoSnapshot, after: &KlaviyoSnapshot) -> BTreeMap<String, u64> {
    after
        .request_counts
        .iter()
        .filter_map(|(route, &n)| {
            let d = n - before.request_counts.get(route).copied().unwrap_or(0);
            (d > 0).then(|| (route.clone(), d))
        })
        .collect()
}

/// Points, segments and coupons of members that changed between two snapshots.
fn member_changes(before: &TrifftSnapshot, after: &TrifftSnapshot) -> Vec<String> {
    let mut changes = Vec::new();
    for new in &after.members {
        let Some(old) = before.member(&new.id) else {
            continue;
        };
        if old.points != new.points {
            changes.push(format!(
                "member {} points {} -> {}",
                new.id, old.points, new.points
            ));
        }
        for s in new.segments.iter().filter(|s| !old.segments.contains(s)) {
            changes.push(format!("member {} joined segment {s}", new.id));
        }
        for s in old.segments.iter().filter(|s| !new.segments.contains(s)) {
            changes.push(format!("member {} left segment {s}", new.id));
        }
        if new.coupons.len() > old.coupons.len() {
            for c in &new.coupons[old.coupons.len()..] {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                let id = c.get("id").and_then(Value::as_str).unwrap_or("?");
                changes.push(format!("member {} got coupon {id} ({name})", new.id));
            }
        }
    }
    changes
}

/// What a batch item URI names (the emulator's own paths, docs/TRIFFT-ASSUMPTIONS.md).
struct ItemTarget<'a> {
    member: &'a str,
    coupon: Option<&'a str>,
    /// The segment, and whether the item removes the member from it.
    segment: Option<(&'a str, bool)>,
}

fn item_target(item: &ItemResult) -> Option<ItemTarget<'_>> {
    let parts: Vec<&str> = item.uri.strip_prefix("/v1/")?.split('/').collect();
    match parts.as_slice() {
        ["member", member, "wallet", _] => Some(ItemTarget {
            member,
            coupon: None,
            segment: None,
        }),
        ["member", member, "coupon", coupon] => Some(ItemTarget {
            member,
            coupon: Some(coupon),
            segment: None,
        }),
        ["segment", segment, "member", member] => Some(ItemTarget {
            member,
            coupon: None,
            segment: Some((segment, item.method == "DELETE")),
        }),
        _ => None,
    }
}

/// Member ids, coupon ids and segment slugs the webhook samples send that the seeded
/// TRIFFT data lacks, each with a seeded id that would make the samples' actions apply.
fn mismatches(seeded: &TrifftSnapshot, webhook: &[WebhookResult]) -> Vec<SampleMismatch> {
    let coupons: Vec<(&str, &str)> = seeded
        .members
        .iter()
        .flat_map(|m| &m.coupons)
        .filter_map(|c| {
            Some((
                c.get("id")?.as_str()?,
                c.get("name").and_then(Value::as_str).unwrap_or("?"),
            ))
        })
        .collect();
    let segments: Vec<&str> = seeded
        .members
        .iter()
        .flat_map(|m| m.segments.iter().map(String::as_str))
        .collect();
    let mut found: Vec<SampleMismatch> = Vec::new();
    let mut note = |kind: &'static str, id: &str, sample: &str| match found
        .iter_mut()
        .find(|m| m.kind == kind && m.sample_id == id)
    {
        Some(m) if !m.samples.iter().any(|s| s == sample) => m.samples.push(sample.into()),
        Some(_) => {}
        None => found.push(SampleMismatch {
            samples: vec![sample.into()],
            kind,
            sample_id: id.into(),
            suggestion: None,
        }),
    };
    for w in webhook {
        for target in w.items.iter().filter_map(item_target) {
            if seeded.member(target.member).is_none() {
                note("member", target.member, &w.sample);
            }
            if let Some(c) = target
                .coupon
                .filter(|c| !coupons.iter().any(|(id, _)| id == c))
            {
                note("coupon", c, &w.sample);
            }
            if let Some((s, _)) = target.segment.filter(|(s, _)| !segments.contains(s)) {
                note("segment", s, &w.sample);
            }
        }
    }
    let is_unknown =
        |kind: &str, id: &str| found.iter().any(|m| m.kind == kind && m.sample_id == id);
    let mut suggestions: Vec<(&'static str, String, String)> = Vec::new();
    let mut taken: Vec<&str> = Vec::new();
    for unknown in found.iter().filter(|m| m.kind == "member") {
        let targets: Vec<ItemTarget> = webhook
            .iter()
            .flat_map(|w| w.items.iter().filter_map(item_target))
            .filter(|t| t.member == unknown.sample_id)
            .collect();
        let adds: Vec<&str> = targets
            .iter()
            .filter_map(|t| t.segment)
            .filter(|s| !s.1)
            .map(|s| s.0)
            .collect();
        let removes: Vec<&str> = targets
            .iter()
            .filter_map(|t| t.segment)
            .filter(|s| s.1)
            .map(|s| s.0)
            .collect();
        let (known_removes, unknown_removes): (Vec<&str>, Vec<&str>) =
            removes.iter().partition(|s| !is_unknown("segment", s));
        // A seeded segment the member is in and no sample adds: stands in for an unknown removal.
        let spare = |m: &crate::TrifftMember| {
            m.segments
                .iter()
                .find(|s| !adds.contains(&s.as_str()) && !known_removes.contains(&s.as_str()))
                .cloned()
        };
        let Some(member) = seeded.members.iter().find(|m| {
            !m.id.is_empty()
                && m.email.is_some()
                && m.points >= 1_000
                && !taken.contains(&m.id.as_str())
                && known_removes
                    .iter()
                    .all(|s| m.segments.iter().any(|x| x == s))
                && adds.iter().all(|s| !m.segments.iter().any(|x| x == s))
                && (unknown_removes.is_empty() || spare(m).is_some())
        }) else {
            continue;
        };
        taken.push(&member.id);
        let mut why = vec![format!("{} points", member.points)];
        if !known_removes.is_empty() {
            why.push(format!("in {}", known_removes.join(", ")));
        }
        let known_adds: Vec<&str> = adds
            .iter()
            .copied()
            .filter(|s| !is_unknown("segment", s))
            .collect();
        if !known_adds.is_empty() {
            why.push(format!("not in {}", known_adds.join(", ")));
        }
        suggestions.push((
            "member",
            unknown.sample_id.clone(),
            format!("{} ({})", member.id, why.join("; ")),
        ));
        if let Some(segment) = spare(member) {
            for s in &unknown_removes {
                suggestions.push((
                    "segment",
                    s.to_string(),
                    format!("{segment} (seeded, and {} is in it)", member.id),
                ));
            }
        }
        for s in adds.iter().filter(|s| is_unknown("segment", s)) {
            if let Some(free) = [
                "vip",
                "newsletter",
                "lapsed",
                "app-users",
                "birthday-club",
                "high-spenders",
            ]
            .iter()
            .find(|x| segments.contains(x) && !member.segments.iter().any(|m| m == *x))
            {
                suggestions.push((
                    "segment",
                    s.to_string(),
                    format!("{free} (seeded; {} is not in it)", member.id),
                ));
            }
        }
    }
    for m in &mut found {
        m.suggestion = match m.kind {
            "coupon" => coupons
                .first()
                .map(|(id, name)| format!("{id} (seeded coupon \"{name}\")")),
            kind => suggestions
                .iter()
                .find(|(k, id, _)| *k == kind && *id == m.sample_id)
                .map(|(_, _, s)| s.clone()),
        };
    }
    found
}
