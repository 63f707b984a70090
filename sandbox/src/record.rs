//! JSON Lines recording of the requests an emulator receives.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};

/// One JSON Lines file (or none), flushed after every line.
#[derive(Debug)]
pub(crate) struct Recorder {
    path: Option<PathBuf>,
    file: Option<Mutex<BufWriter<File>>>,
}

impl Recorder {
    pub(crate) fn none() -> Self {
        Recorder {
            path: None,
            file: None,
        }
    }

    pub(crate) fn create(dir: &Path, name: &str) -> std::io::Result<Self> {
        let path = dir.join(name);
        let file = File::create(&path)?;
        Ok(Recorder {
            path: Some(path),
            file: Some(Mutex::new(BufWriter::new(file))),
        })
    }

    pub(crate) fn write(&self, line: &Value) {
        let Some(file) = &self.file else { return };
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        // A recording failure must not change how the emulator answers.
        let written = serde_json::to_writer(&mut *file, line)
            .map_err(std::io::Error::from)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.flush());
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not write a recorded request");
        }
    }

    /// Everything written so far, read back from the file.
    pub(crate) fn read_back(&self) -> Vec<Value> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let Ok(file) = File::open(path) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str(&line).ok())
            .collect()
    }
}

/// `{"method","path","headers","body"}` with lowercase header names, the credential
/// redacted, and the body as parsed JSON (or as text when it is not JSON).
pub(crate) fn request_line(
    method: &str,
    path_and_query: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let text = if name == http::header::AUTHORIZATION {
            redact(&text)
        } else {
            text
        };
        map.insert(name.as_str().to_ascii_lowercase(), Value::String(text));
    }
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
    };
    json!({"method": method, "path": path_and_query, "headers": map, "body": body})
}

/// Keep the scheme and the first characters of the credential, so a recording shows which
/// key was used without holding it.
fn redact(value: &str) -> String {
    match value.rsplit_once(' ') {
        Some((scheme, secret)) => {
            let shown: String = secret.chars().take(4).collect();
            format!("{scheme} {shown}...redacted")
        }
        None => "redacted".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_credential_but_keeps_the_scheme() {
        assert_eq!(
            redact("Klaviyo-API-Key pk_sandbox_0123"),
            "Klaviyo-API-Key pk_s...redacted"
        );
        assert_eq!(
            redact("Bearer trifft_sandbox_token"),
            "Bearer trif...redacted"
        );
        assert_eq!(redact("garbage"), "redacted");
    }
}
