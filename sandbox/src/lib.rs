//! Emulated TRIFFT and Klaviyo APIs on loopback, for tests, benchmarks and `sandbox demo`.
//!
//! Each emulator checks requests against the vendor's documented contract, independently
//! of the bridge's own types, so a wrong client request fails here as it would upstream.
//!
//! ```no_run
//! # async fn run() -> Result<(), sandbox::SandboxError> {
//! let sandbox = sandbox::Sandbox::start(sandbox::SandboxConfig::default()).await?;
//! println!("{} {}", sandbox.klaviyo_url(), sandbox.trifft_url());
//! sandbox.stop().await;
//! # Ok(()) }
//! ```

mod config;
pub mod demo;
mod faults;
mod ids;
mod klaviyo;
mod record;
mod server;
mod trifft;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{FaultTarget, Faults, KlaviyoRates, SandboxConfig};
pub use klaviyo::{KlaviyoBulkJob, KlaviyoEvent, KlaviyoProfile, KlaviyoSnapshot, Rejection};
pub use trifft::{ItemOutcome, TrifftEvent, TrifftMember, TrifftSnapshot};

use faults::Gates;
use klaviyo::KlaviyoApp;
use record::Recorder;
use trifft::TrifftApp;

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("could not listen for the {api} emulator on 127.0.0.1:{port}: {source}")]
    Bind {
        api: &'static str,
        port: u16,
        source: std::io::Error,
    },
    #[error("could not create the recording {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
}

/// Both emulators, serving on loopback until [`Sandbox::stop`] (or drop).
pub struct Sandbox {
    klaviyo: Arc<KlaviyoApp>,
    trifft: Arc<TrifftApp>,
    gates: Arc<Gates>,
    klaviyo_addr: SocketAddr,
    trifft_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("klaviyo", &self.klaviyo_addr)
            .field("trifft", &self.trifft_addr)
            .finish()
    }
}

fn recorder(dir: &Option<PathBuf>, name: &str) -> Result<Recorder, SandboxError> {
    match dir {
        None => Ok(Recorder::none()),
        Some(dir) => Recorder::create(dir, name).map_err(|source| SandboxError::Record {
            path: dir.join(name),
            source,
        }),
    }
}

async fn bind(api: &'static str, port: u16) -> Result<TcpListener, SandboxError> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| SandboxError::Bind { api, port, source })
}

/// Generated times end at the start of the current UTC day, so the same seed gives the
/// same data all day long and nothing is in the future.
fn data_anchor() -> DateTime<Utc> {
    let now = Utc::now();
    now.date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |midnight| midnight.and_utc())
}

impl Sandbox {
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        config.faults.check().map_err(SandboxError::Config)?;
        if config.members > u32::MAX as usize / 2 || config.events > u32::MAX as usize {
            return Err(SandboxError::Config(
                "members or events is too large".into(),
            ));
        }
        if config.trifft_rate.0 == 0 || config.trifft_rate.1.is_zero() {
            return Err(SandboxError::Config(
                "trifft_rate needs a positive count and period".into(),
            ));
        }
        if let Some(dir) = &config.record_dir {
            std::fs::create_dir_all(dir).map_err(|source| SandboxError::Record {
                path: dir.clone(),
                source,
            })?;
        }
        let klaviyo_listener = bind("Klaviyo", config.klaviyo_port).await?;
        let trifft_listener = bind("TRIFFT", config.trifft_port).await?;
        let klaviyo_addr = klaviyo_listener
            .local_addr()
            .map_err(|source| SandboxError::Bind {
                api: "Klaviyo",
                port: config.klaviyo_port,
                source,
            })?;
        let trifft_addr = trifft_listener
            .local_addr()
            .map_err(|source| SandboxError::Bind {
                api: "TRIFFT",
                port: config.trifft_port,
                source,
            })?;
        let gates = Arc::new(Gates::new(&config.faults));
        let klaviyo = Arc::new(KlaviyoApp::new(
            config.seed,
            config.klaviyo_api_key.clone(),
            config.klaviyo_rates,
            config.import_job_processing,
            gates.clone(),
            recorder(&config.record_dir, "klaviyo-writes.jsonl")?,
            recorder(&config.record_dir, "klaviyo-reads.jsonl")?,
            config.record_in_memory,
            format!("http://{klaviyo_addr}"),
        ));
        let trifft_recorder = recorder(&config.record_dir, "trifft.jsonl")?;
        let trifft_gates = gates.clone();
        // Generating 100k members / 500k events takes a moment: keep it off the runtime.
        let trifft = tokio::task::spawn_blocking(move || {
            Arc::new(TrifftApp::new(
                &config,
                trifft_gates,
                trifft_recorder,
                data_anchor(),
            ))
        })
        .await
        .map_err(|e| SandboxError::Config(format!("data generation failed: {e}")))?;
        let (shutdown, receiver) = watch::channel(false);
        let servers = vec![
            tokio::spawn(server::serve(
                klaviyo_listener,
                klaviyo::router(klaviyo.clone()),
                receiver.clone(),
            )),
            tokio::spawn(server::serve(
                trifft_listener,
                trifft::router(trifft.clone()),
                receiver,
            )),
        ];
        Ok(Sandbox {
            klaviyo,
            trifft,
            gates,
            klaviyo_addr,
            trifft_addr,
            shutdown,
            servers,
        })
    }

    /// The Klaviyo base URL (a `KLAVIYO_BASE_URL`), e.g. `http://127.0.0.1:PORT`.
    pub fn klaviyo_url(&self) -> String {
        format!("http://{}", self.klaviyo_addr)
    }

    /// The TRIFFT base URL (a `TRIFFT_BASE_URL`), e.g. `http://127.0.0.1:PORT/v1`.
    pub fn trifft_url(&self) -> String {
        format!("http://{}/v1", self.trifft_addr)
    }

    /// Replace the faults of both emulators (their `target` says which they hit) and
    /// restart the seeded sequence and the storm's request count.
    pub fn set_faults(&self, faults: Faults) {
        self.gates.set(faults);
    }

    pub fn klaviyo(&self) -> KlaviyoSnapshot {
        self.klaviyo.snapshot()
    }

    pub fn trifft(&self) -> TrifftSnapshot {
        self.trifft.lock().snapshot()
    }

    /// Simulate TRIFFT activity between sync runs: change `count` members (points, tier,
    /// segments, locale, coupons), each with its matching activity event.
    pub fn change_members(&self, count: usize, seed: u64) {
        self.trifft.lock().change_members(count, seed);
    }

    /// Append `count` activity events (random types and members, happening now).
    pub fn append_events(&self, count: usize, seed: u64) {
        self.trifft.lock().append_events(count, seed);
    }

    /// Every Klaviyo POST received, as `{"method","path","headers","body"}` (the credential
    /// redacted), in order.
    pub fn recorded_klaviyo_writes(&self) -> Vec<serde_json::Value> {
        if self.klaviyo.record_in_memory {
            self.klaviyo.lock().writes.clone()
        } else {
            self.klaviyo.writes.read_back()
        }
    }

    /// Stop both servers (in-flight requests finish first).
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for server in self.servers.drain(..) {
            let _ = server.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
