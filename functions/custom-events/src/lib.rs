//! Non-standard TRIFFT events to Klaviyo through a declarative mapping.
