//! Typed settings from environment variables. (Implemented in the foundation issue.)
