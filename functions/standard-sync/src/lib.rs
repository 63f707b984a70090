//! The 15 standard metrics and 13 profile attributes from TRIFFT to Klaviyo, on a schedule.
