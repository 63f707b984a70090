//! What the three bridge functions share: the TRIFFT and Klaviyo clients (auth, pacing,
//! retries), payload mapping, secrets, state and the one error type.
//!
//! The function crates hold only their handlers; everything that talks to the outside
//! world or turns one vendor's data into the other's lives here, behind traits, so the
//! handlers can be tested against the sandbox emulators or in-memory fakes.

pub mod config;
pub mod deadline;
pub mod error;
pub mod http;
pub mod klaviyo;
pub mod mapping;
pub mod pacing;
pub mod retry;
pub mod secrets;
pub mod state;
pub mod trifft;

pub use deadline::Deadline;
pub use error::{Error, ErrorClass, Result, Service};

/// Marks what the bridge itself caused, so it is not fed back in a loop: klaviyo-webhook
/// puts `"source": ORIGIN_MARKER` in every TRIFFT batch item payload, and custom-events
/// ignores a TRIFFT webhook whose body carries it (see `mapping::custom`).
pub const ORIGIN_MARKER: &str = "trifft-klaviyo-bridge";
/// The field that carries [`ORIGIN_MARKER`].
pub const ORIGIN_FIELD: &str = "source";
