//! TRIFFT custom webhooks to Klaviyo events through a declarative mapping (DESIGN §5).
