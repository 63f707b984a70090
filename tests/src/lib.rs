//! Helpers shared by the end-to-end tests.

pub mod client_support;
pub mod lambda_watch;
pub mod moto;
pub mod reliability;
