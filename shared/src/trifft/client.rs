//! The TRIFFT HTTP client. (Implemented in the foundation issue's TRIFFT part.)

use crate::trifft::TrifftPaths;

/// Settings of the TRIFFT client, from `config`.
#[derive(Debug, Clone)]
pub struct TrifftSettings {
    /// `TRIFFT_BASE_URL`, default `https://api.trifft.io/v1`.
    pub base_url: String,
    pub paths: TrifftPaths,
}

/// The TRIFFT client.
#[derive(Debug)]
pub struct TrifftClient {
    pub settings: TrifftSettings,
}
