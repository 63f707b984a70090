//! TRIFFT members and activity events to Klaviyo profiles and the 15 standard metrics (DESIGN §4).
