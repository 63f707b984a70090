//! Klaviyo Flow webhooks to TRIFFT's Batch API: authenticated, validated, idempotent.
