//! From validated actions to TRIFFT Batch API items, and the request's idempotency key.
//! Both pure.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use loyalty_bridge::trifft::{BatchItem, BatchMethod, TrifftPaths, paths};
use loyalty_bridge::{ORIGIN_FIELD, ORIGIN_MARKER};

use crate::parse::{Action, ActionKind, WebhookRequest};

/// One batch item per action, in order. Values in the URI were checked by
/// `is_safe_path_segment` during validation, so nothing can add a path segment or query.
pub fn to_batch_items(actions: &[Action], paths: &TrifftPaths) -> Vec<BatchItem> {
    actions.iter().map(|a| to_batch_item(a, paths)).collect()
}

fn to_batch_item(action: &Action, p: &TrifftPaths) -> BatchItem {
    let member = action.trifft_id.as_str();
    let coupon = action.coupon_id.as_deref().unwrap_or_default();
    let segment = action.segment.as_deref().unwrap_or_default();
    let (template, method) = match action.action {
        ActionKind::CreditPoints => (&p.credit_points, BatchMethod::Post),
        ActionKind::DebitPoints => (&p.debit_points, BatchMethod::Post),
        ActionKind::AssignCoupon => (&p.assign_coupon, BatchMethod::Post),
        ActionKind::AddToSegment => (&p.segment_member, BatchMethod::Post),
        ActionKind::RemoveFromSegment => (&p.segment_member, BatchMethod::Delete),
    };
    let uri = paths::fill(
        template,
        &[
            ("member_id", member),
            ("coupon_id", coupon),
            ("segment", segment),
        ],
    );

    // Every payload carries the origin marker so custom-events can drop the TRIFFT
    // webhooks this very item causes (no loop back into Klaviyo).
    let mut payload = Map::new();
    if let Some(points) = action.points {
        payload.insert("points".into(), json!(points));
    }
    if let Some(reason) = &action.reason {
        payload.insert("reason".into(), json!(reason));
    }
    payload.insert(ORIGIN_FIELD.into(), json!(ORIGIN_MARKER));
    BatchItem {
        uri,
        method,
        payload: Some(Value::Object(payload)),
    }
}

/// The key a delivery claims in the state store, and the one reported back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// As answered to the caller: the sender's own key, or `sha256:<hex>` of the request.
    pub public: String,
    /// As stored: scoped so the webhook's keys never collide with other users of the table.
    pub scoped: String,
    /// SHA-256 of the canonical request, stored with the outcome so a reused key with a
    /// different body is told apart from a true duplicate.
    pub request_hash: String,
}

const SCOPE: &str = "klaviyo-webhook";

pub fn idempotency_key(request: &WebhookRequest) -> IdempotencyKey {
    let request_hash = canonical_hash(&request.actions);
    match &request.idempotency_key {
        Some(key) => IdempotencyKey {
            public: key.clone(),
            scoped: format!("{SCOPE}:key:{key}"),
            request_hash,
        },
        None => IdempotencyKey {
            public: format!("sha256:{request_hash}"),
            scoped: format!("{SCOPE}:body:{request_hash}"),
            request_hash,
        },
    }
}

/// SHA-256 (hex) of the validated actions serialised with a fixed field order, so
/// whitespace, key order, unknown fields and "50" vs 50 do not change it.
pub fn canonical_hash(actions: &[Action]) -> String {
    let canonical = json!({ "v": 1, "actions": actions });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_request;
    use crate::settings::WebhookSettings;

    const M: &str = "bf428af0-1c2d-4e5f-91b5-bda6e211aa00";

    fn request(body: &str) -> WebhookRequest {
        parse_request(body.as_bytes(), &WebhookSettings::default()).unwrap()
    }

    #[test]
    fn items_follow_the_assumed_uris() {
        let r = request(&format!(
            r#"{{"actions": [
                {{"action": "credit_points", "trifft_id": "{M}", "points": "50", "reason": "Birthday"}},
                {{"action": "debit_points", "trifft_id": "{M}", "points": 20}},
                {{"action": "assign_coupon", "trifft_id": "{M}", "coupon_id": "c-9"}},
                {{"action": "add_to_segment", "trifft_id": "{M}", "segment": "vip"}},
                {{"action": "remove_from_segment", "trifft_id": "{M}", "segment": "vip"}}
            ]}}"#
        ));
        let items = to_batch_items(&r.actions, &TrifftPaths::default());
        let got = serde_json::to_value(&items).unwrap();
        assert_eq!(
            got,
            json!([
                {"uri": format!("/v1/member/{M}/wallet/credit"), "method": "POST", "payload": {"points": 50, "reason": "Birthday", "source": "trifft-klaviyo-bridge"}},
                {"uri": format!("/v1/member/{M}/wallet/debit"), "method": "POST", "payload": {"points": 20, "source": "trifft-klaviyo-bridge"}},
                {"uri": format!("/v1/member/{M}/coupon/c-9"), "method": "POST", "payload": {"source": "trifft-klaviyo-bridge"}},
                {"uri": format!("/v1/segment/vip/member/{M}"), "method": "POST", "payload": {"source": "trifft-klaviyo-bridge"}},
                {"uri": format!("/v1/segment/vip/member/{M}"), "method": "DELETE", "payload": {"source": "trifft-klaviyo-bridge"}},
            ])
        );
    }

    #[test]
    fn configured_templates_are_used() {
        let paths = TrifftPaths {
            credit_points: "/v2/wallets/{member_id}/points".into(),
            ..Default::default()
        };
        let r = request(&format!(
            r#"{{"action": "credit_points", "trifft_id": "{M}", "points": 1}}"#
        ));
        assert_eq!(
            to_batch_items(&r.actions, &paths)[0].uri,
            format!("/v2/wallets/{M}/points")
        );
    }

    #[test]
    fn canonical_hash_ignores_formatting_order_and_unknown_fields() {
        let a = request(&format!(
            r#"{{"action":"credit_points","member":{{"trifft_id":"{M}"}},"points":50}}"#
        ));
        let b = request(&format!(
            "{{\n  \"points\": \"50\",\n  \"note\": \"x\",\n  \"trifft_id\": \"{M}\",\n  \"action\": \"credit_points\"\n}}"
        ));
        assert_eq!(idempotency_key(&a), idempotency_key(&b));
        let c = request(&format!(
            r#"{{"action":"credit_points","trifft_id":"{M}","points":51}}"#
        ));
        assert_ne!(idempotency_key(&a).scoped, idempotency_key(&c).scoped);
        assert!(idempotency_key(&a).public.starts_with("sha256:"));
    }

    #[test]
    fn sender_key_wins_and_is_scoped() {
        let r = request(&format!(
            r#"{{"action":"credit_points","trifft_id":"{M}","points":5,"idempotency_key":"bday-2026-{M}"}}"#
        ));
        let key = idempotency_key(&r);
        assert_eq!(key.public, format!("bday-2026-{M}"));
        assert_eq!(key.scoped, format!("klaviyo-webhook:key:bday-2026-{M}"));
        assert_eq!(key.request_hash, canonical_hash(&r.actions));
    }
}
