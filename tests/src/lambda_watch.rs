//! The function binaries under a Lambda Runtime API emulator: `cargo-lambda lambda watch`
//! (PyPI `cargo-lambda`, put on PATH by `scripts/test`), started in the workspace root.
//! It builds a binary with `cargo run --bin NAME` on its first invocation, so a first
//! invoke can take minutes; later ones are fast.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long one invocation may take, including the build on the first one.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(1200);
/// How long the emulator may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `cargo-lambda lambda watch`; stopped (with the functions it started) on drop.
pub struct LambdaWatch {
    child: Child,
    port: u16,
    http: reqwest::Client,
    log: PathBuf,
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

/// A value as the env file's parser (dotenv) reads it back unchanged: single quotes keep
/// everything literal; a value holding a single quote is double-quoted with escapes.
fn env_file_value(value: &str) -> String {
    if !value.contains('\'') && !value.contains('\n') {
        return format!("'{value}'");
    }
    let escaped = value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl LambdaWatch {
    /// Start the emulator with `env` set for the functions; returns once it answers.
    pub async fn start(env: &[(&str, &str)]) -> LambdaWatch {
        let port = free_port();
        let log =
            std::env::temp_dir().join(format!("lambda-watch-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create the watch log");
        let mut command = Command::new("cargo-lambda");
        command
            .args([
                "lambda",
                "watch",
                "--invoke-address",
                "127.0.0.1",
                "--invoke-port",
                &port.to_string(),
            ])
            // The binaries are rebuilt only when the tests are; nothing should change under us.
            .arg("--ignore-changes")
            .args(["--timeout", &INVOKE_TIMEOUT.as_secs().to_string()])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log handle"))
            .stderr(log_file);
        // An env file, not `--env-var`: cargo-lambda splits `--env-var` values at commas,
        // which breaks JSON values such as SANDBOX_SECRETS_JSON.
        let env_file = log.with_extension("env");
        let lines: String = env
            .iter()
            .map(|(name, value)| format!("{name}={}\n", env_file_value(value)))
            .collect();
        std::fs::write(&env_file, lines).expect("write the watch env file");
        command.arg("--env-file").arg(&env_file);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start cargo-lambda ({e}): run the tests with scripts/test, which puts .venv/bin on PATH")
        });
        let http = reqwest::Client::builder()
            .timeout(INVOKE_TIMEOUT)
            .build()
            .expect("an HTTP client");
        let mut watch = LambdaWatch {
            child,
            port,
            http,
            log,
        };
        watch.wait_until_listening().await;
        watch
    }

    async fn wait_until_listening(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cargo-lambda exited with {status}:\n{}", self.log_text());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "cargo-lambda did not listen in time:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The emulator's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Invoke the function built from binary `function` with `payload`; the function's
    /// answer, or for a function error the Lambda error body (`errorType`, `errorMessage`).
    pub async fn invoke(&self, function: &str, payload: serde_json::Value) -> serde_json::Value {
        let url = format!("{}/2015-03-31/functions/{function}/invocations", self.url());
        let response = self
            .http
            .post(&url)
            .json(&payload)
            .send()
            .await
            .unwrap_or_else(|e| panic!("invoke {function}: {e}\n{}", self.log_text()));
        let status = response.status();
        let body = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("read the answer of {function}: {e}"));
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{function} answered HTTP {status} with a body that is not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&body),
                self.log_text()
            )
        })
    }

    /// What the emulator and the functions printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LambdaWatch {
    fn drop(&mut self) {
        // SIGTERM lets cargo-lambda stop the function processes it started; SIGKILL
        // (Child::kill) would leave them running. Both act on this child's own PID only.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
