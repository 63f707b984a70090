//! Emulated TRIFFT and Klaviyo APIs.
