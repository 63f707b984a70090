//! The TRIFFT paths the bridge uses. Only the base URL is documented; every path below is
//! **assumed** and can be changed by an environment variable (docs/TRIFFT-ASSUMPTIONS.md).
//!
//! Item URIs are templates: `{member_id}`, `{coupon_id}` and `{segment}` are replaced by
//! values the webhook has already checked to be safe in a URI path segment.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrifftPaths {
    /// `TRIFFT_BATCH_PATH`: the Batch API, relative to the base URL.
    pub batch: String,
    /// `TRIFFT_URI_CREDIT_POINTS`: batch item URI to credit points.
    pub credit_points: String,
    /// `TRIFFT_URI_DEBIT_POINTS`: batch item URI to debit points.
    pub debit_points: String,
    /// `TRIFFT_URI_ASSIGN_COUPON`: batch item URI to assign a coupon.
    pub assign_coupon: String,
    /// `TRIFFT_URI_SEGMENT_MEMBER`: batch item URI of a segment membership (POST adds,
    /// DELETE removes).
    pub segment_member: String,
    /// `TRIFFT_MEMBERS_PATH`: feed of members changed since a time, relative to the base URL.
    pub members_feed: String,
    /// `TRIFFT_ACTIVITY_PATH`: feed of activity events since a time, relative to the base URL.
    pub activity_feed: String,
}

impl Default for TrifftPaths {
    fn default() -> Self {
        TrifftPaths {
            batch: "/batch".into(),
            credit_points: "/v1/member/{member_id}/wallet/credit".into(),
            debit_points: "/v1/member/{member_id}/wallet/debit".into(),
            assign_coupon: "/v1/member/{member_id}/coupon/{coupon_id}".into(),
            segment_member: "/v1/segment/{segment}/member/{member_id}".into(),
            members_feed: "/members/changes".into(),
            activity_feed: "/activity/events".into(),
        }
    }
}

/// Fill a URI template. Callers pass only values checked by [`is_safe_path_segment`].
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// True when `value` can stand alone as one URI path segment: 1..=128 characters of
/// ASCII letters, digits, `-`, `_` and `.` (but not `.` or `..`). Nothing that could add a
/// segment, a query, a fragment or an encoded character gets through.
pub fn is_safe_path_segment(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_templates() {
        let p = TrifftPaths::default();
        assert_eq!(
            fill(
                &p.segment_member,
                &[("segment", "vip"), ("member_id", "m-1")]
            ),
            "/v1/segment/vip/member/m-1"
        );
    }

    #[test]
    fn refuses_anything_that_could_change_the_uri() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a?b",
            "a#b",
            "a%2Fb",
            "a b",
            "ä",
            "a\nb",
            &"x".repeat(129),
        ] {
            assert!(!is_safe_path_segment(bad), "{bad:?}");
        }
        for good in [
            "bf428af0-1c2d-4e5f-91b5-bda6e211aa00",
            "vip_gold",
            "venue-odido.248159",
        ] {
            assert!(is_safe_path_segment(good), "{good:?}");
        }
    }
}
