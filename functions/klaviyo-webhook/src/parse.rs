//! Body parsing and validation: a pure function from the raw bytes to either a typed
//! request or every field error found, plus warnings about fields that were ignored.
//!
//! Klaviyo renders template variables as text, so numeric strings ("50") count as
//! numbers, empty strings count as missing, and a value still holding `{{ ... }}` means a
//! template variable did not render (the profile lacks the property, or a typo).

use serde::Serialize;
use serde_json::{Map, Value};

use loyalty_bridge::trifft::BATCH_MAX_ITEMS;
use loyalty_bridge::trifft::paths::is_safe_path_segment;

use crate::settings::WebhookSettings;

pub const MAX_REASON_CHARS: usize = 255;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    CreditPoints,
    DebitPoints,
    AssignCoupon,
    AddToSegment,
    RemoveFromSegment,
}

impl ActionKind {
    pub const ALL: [ActionKind; 5] = [
        ActionKind::CreditPoints,
        ActionKind::DebitPoints,
        ActionKind::AssignCoupon,
        ActionKind::AddToSegment,
        ActionKind::RemoveFromSegment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::CreditPoints => "credit_points",
            ActionKind::DebitPoints => "debit_points",
            ActionKind::AssignCoupon => "assign_coupon",
            ActionKind::AddToSegment => "add_to_segment",
            ActionKind::RemoveFromSegment => "remove_from_segment",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        ActionKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The fields this action uses beside `action`, `member` and `idempotency_key`.
    fn fields(self) -> &'static [&'static str] {
        match self {
            ActionKind::CreditPoints | ActionKind::DebitPoints => &["points", "reason"],
            ActionKind::AssignCoupon => &["coupon_id", "reason"],
            ActionKind::AddToSegment | ActionKind::RemoveFromSegment => &["segment"],
        }
    }
}

/// One validated action. Serialised (field order fixed, unknown fields gone) it is also
/// the canonical form the request hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub action: ActionKind,
    pub trifft_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coupon_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// An action's own key inside a list: part of the canonical form, so two lists that
    /// differ only in item keys are two requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub actions: Vec<Action>,
    /// The request's key: the top-level `idempotency_key` (of the single action, or of
    /// the `{"actions": [...]}` object).
    pub idempotency_key: Option<String>,
    pub warnings: Vec<Warning>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub field: String,
    pub message: String,
}

/// Error codes in the `{"error": {"code", ...}}` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: not JSON.
    MalformedJson,
    /// 400: JSON of the wrong shape (not an object, a field of the wrong JSON type).
    InvalidShape,
    /// 422: a required field is absent or empty.
    MissingField,
    /// 422: a value still holds `{{ ... }}`.
    UnrenderedTemplate,
    /// 422: a value of the right type that is not acceptable.
    InvalidValue,
    /// 422: `action` is not one of the five.
    UnknownAction,
    /// 422: a guardrail from configuration (points cap, allowlist, list size).
    LimitExceeded,
    /// 422: a coupon id or segment outside the configured allowlist.
    NotAllowed,
}

impl ErrorCode {
    pub fn is_shape(self) -> bool {
        matches!(self, ErrorCode::MalformedJson | ErrorCode::InvalidShape)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub code: ErrorCode,
    pub message: String,
    /// The JSON path of the field (`actions[3].points`), `None` for the whole body.
    pub field: Option<String>,
}

/// Everything wrong with a body. 400 when any error is about shape, 422 otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<Warning>,
}

impl Invalid {
    pub fn status(&self) -> u16 {
        if self.errors.iter().any(|e| e.code.is_shape()) {
            400
        } else {
            422
        }
    }
}

/// Parse and validate a body. Pure: no I/O, no clock.
pub fn parse_request(body: &[u8], settings: &WebhookSettings) -> Result<WebhookRequest, Invalid> {
    let mut v = Validator::default();
    let root: Value = match serde_json::from_slice(body) {
        Ok(root) => root,
        Err(e) => {
            v.error(
                ErrorCode::MalformedJson,
                None,
                format!("the body is not valid JSON: {e}"),
            );
            return Err(v.into_invalid());
        }
    };
    let Value::Object(root) = root else {
        v.error(
            ErrorCode::InvalidShape,
            None,
            "the body must be a JSON object: one action, or {\"actions\": [...]}",
        );
        return Err(v.into_invalid());
    };

    let mut actions = Vec::new();
    let idempotency_key =
        v.optional_string(&root, "idempotency_key", "", MAX_IDEMPOTENCY_KEY_CHARS);
    match root.get("actions") {
        Some(list) => {
            for (name, _) in root
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "actions" | "idempotency_key"))
            {
                if ACTION_FIELDS.contains(&name.as_str()) {
                    v.error(
                        ErrorCode::InvalidShape,
                        Some(name.clone()),
                        "with \"actions\", put every action's fields inside the list items",
                    );
                } else {
                    v.warn(name.clone(), "unknown field, ignored");
                }
            }
            match list {
                Value::Array(items) if items.is_empty() => {
                    v.error(
                        ErrorCode::MissingField,
                        Some("actions".into()),
                        "the list holds no action",
                    );
                }
                Value::Array(items) if items.len() > BATCH_MAX_ITEMS => {
                    v.error(
                        ErrorCode::LimitExceeded,
                        Some("actions".into()),
                        format!(
                            "{} actions; at most {BATCH_MAX_ITEMS} fit one TRIFFT batch",
                            items.len()
                        ),
                    );
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let prefix = format!("actions[{i}].");
                        match item {
                            Value::Object(obj) => {
                                if let Some(action) = v.action(obj, &prefix, settings, true) {
                                    actions.push(action);
                                }
                            }
                            _ => v.error(
                                ErrorCode::InvalidShape,
                                Some(format!("actions[{i}]")),
                                "each action must be a JSON object",
                            ),
                        }
                    }
                }
                _ => v.error(
                    ErrorCode::InvalidShape,
                    Some("actions".into()),
                    "must be a list of action objects",
                ),
            }
        }
        None => {
            if let Some(action) = v.action(&root, "", settings, false) {
                actions.push(action);
            }
        }
    }

    if v.errors.is_empty() {
        v.request_guardrails(&actions, settings);
    }
    if !v.errors.is_empty() {
        return Err(v.into_invalid());
    }
    Ok(WebhookRequest {
        actions,
        idempotency_key,
        warnings: v.warnings,
    })
}

const ACTION_FIELDS: [&str; 7] = [
    "action",
    "member",
    "trifft_id",
    "points",
    "reason",
    "coupon_id",
    "segment",
];

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
    warnings: Vec<Warning>,
}

/// A string field as found: absent (or empty), or present with the trimmed text.
enum Text {
    Missing,
    /// Wrong JSON type or an unrendered template: already reported.
    Reported,
    Present(String),
}

impl Validator {
    fn into_invalid(self) -> Invalid {
        Invalid {
            errors: self.errors,
            warnings: self.warnings,
        }
    }

    fn error(&mut self, code: ErrorCode, field: Option<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            code,
            message: message.into(),
            field,
        });
    }

    fn warn(&mut self, field: String, message: impl Into<String>) {
        self.warnings.push(Warning {
            field,
            message: message.into(),
        });
    }

    /// A text field: strings are trimmed, empty counts as missing, `null` too.
    fn text(&mut self, obj: &Map<String, Value>, name: &str, prefix: &str) -> Text {
        let field = format!("{prefix}{name}");
        match obj.get(name) {
            None | Some(Value::Null) => Text::Missing,
            Some(Value::String(s)) => {
                let s = s.trim();
                if s.is_empty() {
                    Text::Missing
                } else if looks_unrendered(s) {
                    self.error(
                        ErrorCode::UnrenderedTemplate,
                        Some(field.clone()),
                        format!(
                            "{field} still holds a template tag ({}); the Klaviyo template variable did not render - check the variable name and that the profile has the property",
                            excerpt(s)
                        ),
                    );
                    Text::Reported
                } else {
                    Text::Present(s.to_string())
                }
            }
            Some(other) => {
                self.error(
                    ErrorCode::InvalidShape,
                    Some(field.clone()),
                    format!("{field} must be a string, not {}", json_type(other)),
                );
                Text::Reported
            }
        }
    }

    fn optional_string(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        prefix: &str,
        max_chars: usize,
    ) -> Option<String> {
        match self.text(obj, name, prefix) {
            Text::Present(s) if s.chars().count() > max_chars => {
                self.error(
                    ErrorCode::InvalidValue,
                    Some(format!("{prefix}{name}")),
                    format!(
                        "{prefix}{name} is {} characters; at most {max_chars}",
                        s.chars().count()
                    ),
                );
                None
            }
            Text::Present(s) => Some(s),
            Text::Missing | Text::Reported => None,
        }
    }

    /// A value that becomes one TRIFFT URI path segment (member id, coupon id, segment slug).
    fn path_segment(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        prefix: &str,
        what: &str,
    ) -> Option<String> {
        let field = format!("{prefix}{name}");
        match self.text(obj, name, prefix) {
            Text::Missing => {
                self.error(
                    ErrorCode::MissingField,
                    Some(field.clone()),
                    format!("{field} is required ({what})"),
                );
                None
            }
            Text::Reported => None,
            Text::Present(s) if !is_safe_path_segment(&s) => {
                self.error(
                    ErrorCode::InvalidValue,
                    Some(field.clone()),
                    format!("{field} must be 1 to 128 letters, digits, '-', '_' or '.' ({what})"),
                );
                None
            }
            Text::Present(s) => Some(s),
        }
    }

    fn action(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        settings: &WebhookSettings,
        in_list: bool,
    ) -> Option<Action> {
        let errors_before = self.errors.len();
        let kind = match self.text(obj, "action", prefix) {
            Text::Missing => {
                self.error(
                    ErrorCode::MissingField,
                    Some(format!("{prefix}action")),
                    format!("{prefix}action is required: one of {}", action_names()),
                );
                None
            }
            Text::Reported => None,
            Text::Present(name) => match ActionKind::from_name(&name) {
                Some(kind) => Some(kind),
                None => {
                    self.error(
                        ErrorCode::UnknownAction,
                        Some(format!("{prefix}action")),
                        format!(
                            "unknown action {:?}: one of {}",
                            excerpt(&name),
                            action_names()
                        ),
                    );
                    None
                }
            },
        };

        let trifft_id = self.member_id(obj, prefix);

        let mut action = Action {
            action: kind.unwrap_or(ActionKind::CreditPoints),
            trifft_id: trifft_id.unwrap_or_default(),
            points: None,
            reason: None,
            coupon_id: None,
            segment: None,
            idempotency_key: if in_list {
                self.optional_string(obj, "idempotency_key", prefix, MAX_IDEMPOTENCY_KEY_CHARS)
            } else {
                None
            },
        };

        if let Some(kind) = kind {
            let uses = kind.fields();
            for name in ["points", "reason", "coupon_id", "segment"] {
                if !uses.contains(&name) && obj.get(name).is_some_and(|v| !is_blank(v)) {
                    self.warn(
                        format!("{prefix}{name}"),
                        format!("not used by {}, ignored", kind.as_str()),
                    );
                }
            }
            match kind {
                ActionKind::CreditPoints | ActionKind::DebitPoints => {
                    action.points = self.points(obj, prefix, settings);
                    action.reason = self.optional_string(obj, "reason", prefix, MAX_REASON_CHARS);
                }
                ActionKind::AssignCoupon => {
                    action.coupon_id =
                        self.path_segment(obj, "coupon_id", prefix, "the TRIFFT coupon id");
                    action.reason = self.optional_string(obj, "reason", prefix, MAX_REASON_CHARS);
                    if let Some(coupon) = &action.coupon_id
                        && !settings.allowed_coupon_ids.is_empty()
                        && !settings.allowed_coupon_ids.contains(coupon)
                    {
                        self.error(
                            ErrorCode::NotAllowed,
                            Some(format!("{prefix}coupon_id")),
                            format!("coupon {coupon:?} is not in ALLOWED_COUPON_IDS"),
                        );
                    }
                }
                ActionKind::AddToSegment | ActionKind::RemoveFromSegment => {
                    action.segment =
                        self.path_segment(obj, "segment", prefix, "the TRIFFT segment slug");
                    if let Some(segment) = &action.segment
                        && !settings.allowed_segments.is_empty()
                        && !settings.allowed_segments.contains(segment)
                    {
                        self.error(
                            ErrorCode::NotAllowed,
                            Some(format!("{prefix}segment")),
                            format!("segment {segment:?} is not in ALLOWED_SEGMENTS"),
                        );
                    }
                }
            }
        }

        // (A single action's `idempotency_key` is the request's, read by `parse_request`.)
        for name in obj
            .keys()
            .filter(|k| !ACTION_FIELDS.contains(&k.as_str()) && k.as_str() != "idempotency_key")
        {
            self.warn(format!("{prefix}{name}"), "unknown field, ignored");
        }

        (self.errors.len() == errors_before).then_some(action)
    }

    /// `member.trifft_id`, or a flat `trifft_id` beside `action` (accepted as a shortcut);
    /// both present and different is an error.
    fn member_id(&mut self, obj: &Map<String, Value>, prefix: &str) -> Option<String> {
        let nested = match obj.get("member") {
            None | Some(Value::Null) => None,
            Some(Value::Object(member)) => {
                for name in member.keys().filter(|k| k.as_str() != "trifft_id") {
                    self.warn(format!("{prefix}member.{name}"), "unknown field, ignored");
                }
                Some(member)
            }
            Some(other) => {
                self.error(
                    ErrorCode::InvalidShape,
                    Some(format!("{prefix}member")),
                    format!(
                        "{prefix}member must be an object like {{\"trifft_id\": \"...\"}}, not {}",
                        json_type(other)
                    ),
                );
                return None;
            }
        };
        let what = "the TRIFFT member id, e.g. the Klaviyo profile property trifft_id";
        let nested_has = nested.is_some_and(|m| m.get("trifft_id").is_some_and(|v| !is_blank(v)));
        let flat_has = obj.get("trifft_id").is_some_and(|v| !is_blank(v));
        match (nested, nested_has, flat_has) {
            (Some(member), true, false) => {
                self.path_segment(member, "trifft_id", &format!("{prefix}member."), what)
            }
            (_, false, true) => self.path_segment(obj, "trifft_id", prefix, what),
            (Some(member), true, true) => {
                let a = self.path_segment(member, "trifft_id", &format!("{prefix}member."), what);
                let b = self.path_segment(obj, "trifft_id", prefix, what);
                match (a, b) {
                    (Some(a), Some(b)) if a == b => Some(a),
                    (Some(_), Some(_)) => {
                        self.error(
                            ErrorCode::InvalidValue,
                            Some(format!("{prefix}member.trifft_id")),
                            format!(
                                "{prefix}member.trifft_id and {prefix}trifft_id differ; send one"
                            ),
                        );
                        None
                    }
                    _ => None,
                }
            }
            _ => {
                self.error(
                    ErrorCode::MissingField,
                    Some(format!("{prefix}member.trifft_id")),
                    format!("{prefix}member.trifft_id is required ({what})"),
                );
                None
            }
        }
    }

    fn points(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        settings: &WebhookSettings,
    ) -> Option<u64> {
        let field = format!("{prefix}points");
        let parsed = match obj.get("points") {
            None | Some(Value::Null) => Err((
                ErrorCode::MissingField,
                format!("{field} is required: a whole number of points above 0"),
            )),
            Some(Value::Number(n)) => n.as_u64().ok_or((
                ErrorCode::InvalidValue,
                format!("{field} must be a whole number above 0, not {n}"),
            )),
            Some(Value::String(s)) => match self.text(obj, "points", prefix) {
                Text::Missing => Err((
                    ErrorCode::MissingField,
                    format!("{field} is required: a whole number of points above 0"),
                )),
                Text::Reported => return None,
                Text::Present(t) => parse_points_text(&t).ok_or((
                    ErrorCode::InvalidValue,
                    format!(
                        "{field} must be a whole number above 0, not {:?}",
                        excerpt(s)
                    ),
                )),
            },
            Some(other) => Err((
                ErrorCode::InvalidShape,
                format!(
                    "{field} must be a number or a numeric string, not {}",
                    json_type(other)
                ),
            )),
        };
        match parsed {
            Ok(0) => {
                self.error(
                    ErrorCode::InvalidValue,
                    Some(field.clone()),
                    format!("{field} must be above 0"),
                );
                None
            }
            Ok(n) if n > settings.max_points_per_action => {
                self.error(
                    ErrorCode::LimitExceeded,
                    Some(field.clone()),
                    format!(
                        "{field} is {n}; at most {} per action (MAX_POINTS_PER_ACTION)",
                        settings.max_points_per_action
                    ),
                );
                None
            }
            Ok(n) => Some(n),
            Err((code, message)) => {
                self.error(code, Some(field), message);
                None
            }
        }
    }

    fn request_guardrails(&mut self, actions: &[Action], settings: &WebhookSettings) {
        let total = actions
            .iter()
            .filter_map(|a| a.points)
            .fold(0u64, u64::saturating_add);
        if total > settings.max_points_per_request {
            let field = if actions.len() > 1 {
                "actions"
            } else {
                "points"
            };
            self.error(
                ErrorCode::LimitExceeded,
                Some(field.into()),
                format!(
                    "{total} points in one request; at most {} (MAX_POINTS_PER_REQUEST)",
                    settings.max_points_per_request
                ),
            );
        }
    }
}

/// Digits only (no sign, no decimals, no exponent), so "50" is 50 and "1e3" is refused.
fn parse_points_text(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn looks_unrendered(s: &str) -> bool {
    s.contains("{{") || s.contains("}}") || s.contains("{%") || s.contains("%}")
}

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Enough of a value to recognise it in an error message, never a long echo.
fn excerpt(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(MAX).collect::<String>())
    }
}

fn action_names() -> String {
    ActionKind::ALL.map(ActionKind::as_str).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<WebhookRequest, Invalid> {
        parse_request(v.to_string().as_bytes(), &WebhookSettings::default())
    }

    fn first_error(v: Value) -> (u16, FieldError) {
        let invalid = parse(v).unwrap_err();
        (invalid.status(), invalid.errors[0].clone())
    }

    const M: &str = "bf428af0-1c2d-4e5f-91b5-bda6e211aa00";

    #[test]
    fn each_action_parses() {
        let r = parse(json!({"action": "credit_points", "member": {"trifft_id": M}, "points": 50, "reason": "Birthday"})).unwrap();
        assert_eq!(r.actions[0].points, Some(50));
        assert_eq!(r.actions[0].reason.as_deref(), Some("Birthday"));
        let r = parse(json!({"action": "debit_points", "trifft_id": M, "points": "20"})).unwrap();
        assert_eq!(
            (r.actions[0].action, r.actions[0].points),
            (ActionKind::DebitPoints, Some(20))
        );
        let r = parse(
            json!({"action": "assign_coupon", "member": {"trifft_id": M}, "coupon_id": "c-1"}),
        )
        .unwrap();
        assert_eq!(r.actions[0].coupon_id.as_deref(), Some("c-1"));
        for kind in ["add_to_segment", "remove_from_segment"] {
            let r = parse(json!({"action": kind, "member": {"trifft_id": M}, "segment": "vip"}))
                .unwrap();
            assert_eq!(r.actions[0].segment.as_deref(), Some("vip"));
            assert_eq!(r.actions[0].action.as_str(), kind);
        }
    }

    #[test]
    fn points_accept_whole_numbers_and_numeric_strings_only() {
        for (points, expected) in [
            (json!(50), 50),
            (json!("50"), 50),
            (json!(" 7 "), 7),
            (json!("0010"), 10),
        ] {
            let r = parse(json!({"action": "credit_points", "trifft_id": M, "points": points}))
                .unwrap();
            assert_eq!(r.actions[0].points, Some(expected));
        }
        for bad in [
            json!("50.5"),
            json!(50.5),
            json!("-1"),
            json!(-1),
            json!("0"),
            json!(0),
            json!("1e3"),
            json!(1e3),
            json!("99999999999999999999999"),
            json!("abc"),
            json!("+5"),
        ] {
            let (status, e) = first_error(
                json!({"action": "credit_points", "trifft_id": M, "points": bad.clone()}),
            );
            assert_eq!(status, 422, "{bad}");
            assert_eq!(e.field.as_deref(), Some("points"), "{bad}");
        }
        let (status, e) =
            first_error(json!({"action": "credit_points", "trifft_id": M, "points": true}));
        assert_eq!((status, e.code), (400, ErrorCode::InvalidShape));
        let (status, e) =
            first_error(json!({"action": "credit_points", "trifft_id": M, "points": ""}));
        assert_eq!((status, e.code), (422, ErrorCode::MissingField));
    }

    #[test]
    fn caps_per_action_and_per_request() {
        let (status, e) =
            first_error(json!({"action": "credit_points", "trifft_id": M, "points": 10_001}));
        assert_eq!(
            (status, e.code, e.field.as_deref()),
            (422, ErrorCode::LimitExceeded, Some("points"))
        );
        assert!(
            parse(json!({"action": "credit_points", "trifft_id": M, "points": 10_000})).is_ok()
        );
        let eleven: Vec<Value> = (0..11)
            .map(|_| json!({"action": "credit_points", "trifft_id": M, "points": 10_000}))
            .collect();
        let (status, e) = first_error(json!({ "actions": eleven }));
        assert_eq!(
            (status, e.code, e.field.as_deref()),
            (422, ErrorCode::LimitExceeded, Some("actions"))
        );
        let ten: Vec<Value> = (0..10)
            .map(|_| json!({"action": "debit_points", "trifft_id": M, "points": 10_000}))
            .collect();
        assert!(parse(json!({ "actions": ten })).is_ok());
    }

    #[test]
    fn empty_strings_are_missing_and_unrendered_templates_are_named() {
        let (status, e) = first_error(
            json!({"action": "credit_points", "member": {"trifft_id": ""}, "points": 5}),
        );
        assert_eq!(
            (status, e.code, e.field.as_deref()),
            (422, ErrorCode::MissingField, Some("member.trifft_id"))
        );
        let (status, e) = first_error(
            json!({"action": "credit_points", "member": {"trifft_id": "{{ person|lookup:'trifft_id' }}"}, "points": 5}),
        );
        assert_eq!(
            (status, e.code, e.field.as_deref()),
            (422, ErrorCode::UnrenderedTemplate, Some("member.trifft_id"))
        );
        assert!(e.message.contains("did not render"), "{}", e.message);
        let (_, e) = first_error(
            json!({"action": "credit_points", "trifft_id": M, "points": "{{ event.points }}"}),
        );
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::UnrenderedTemplate, Some("points"))
        );
        // An empty optional field is just absent.
        let r = parse(json!({"action": "credit_points", "trifft_id": M, "points": 5, "reason": "", "idempotency_key": " "})).unwrap();
        assert_eq!(
            (r.actions[0].reason.clone(), r.idempotency_key),
            (None, None)
        );
    }

    #[test]
    fn ids_that_could_change_the_trifft_uri_are_refused() {
        for bad in [
            "../admin", "a/b", "m?x=1", "m#f", "m%2F", "a b", "..", "ümlaut",
        ] {
            let (status, e) = first_error(
                json!({"action": "add_to_segment", "trifft_id": bad, "segment": "vip"}),
            );
            assert_eq!(
                (status, e.code, e.field.as_deref()),
                (422, ErrorCode::InvalidValue, Some("trifft_id")),
                "{bad}"
            );
            let (_, e) =
                first_error(json!({"action": "add_to_segment", "trifft_id": M, "segment": bad}));
            assert_eq!(e.field.as_deref(), Some("segment"), "{bad}");
            let (_, e) =
                first_error(json!({"action": "assign_coupon", "trifft_id": M, "coupon_id": bad}));
            assert_eq!(e.field.as_deref(), Some("coupon_id"), "{bad}");
        }
    }

    #[test]
    fn shape_errors_are_400() {
        for (body, field) in [
            ("not json", None),
            ("[1,2]", None),
            ("\"text\"", None),
            (
                r#"{"actions": {"action": "credit_points"}}"#,
                Some("actions"),
            ),
            (r#"{"actions": [42]}"#, Some("actions[0]")),
            (
                r#"{"action": "credit_points", "member": "m-1", "points": 1}"#,
                Some("member"),
            ),
            (
                r#"{"action": 7, "trifft_id": "m-1", "points": 1}"#,
                Some("action"),
            ),
        ] {
            let invalid = parse_request(body.as_bytes(), &WebhookSettings::default()).unwrap_err();
            assert_eq!(invalid.status(), 400, "{body}");
            assert_eq!(invalid.errors[0].field.as_deref(), field, "{body}");
        }
    }

    #[test]
    fn unknown_action_and_missing_fields() {
        let (status, e) =
            first_error(json!({"action": "give_points", "trifft_id": M, "points": 1}));
        assert_eq!(
            (status, e.code, e.field.as_deref()),
            (422, ErrorCode::UnknownAction, Some("action"))
        );
        assert!(e.message.contains("credit_points"), "{}", e.message);
        let (_, e) = first_error(json!({"action": "assign_coupon", "trifft_id": M}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("coupon_id"))
        );
        let (_, e) = first_error(json!({"action": "credit_points", "points": 3}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("member.trifft_id"))
        );
        let (_, e) = first_error(json!({"trifft_id": M, "points": 3}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::MissingField, Some("action"))
        );
    }

    #[test]
    fn list_errors_name_the_index() {
        let invalid = parse(json!({"actions": [
            {"action": "credit_points", "trifft_id": M, "points": 1},
            {"action": "credit_points", "trifft_id": M, "points": 1},
            {"action": "credit_points", "trifft_id": M, "points": 1},
            {"action": "credit_points", "trifft_id": M, "points": "x"},
            {"action": "add_to_segment", "trifft_id": M},
        ]}))
        .unwrap_err();
        let fields: Vec<_> = invalid
            .errors
            .iter()
            .map(|e| e.field.clone().unwrap())
            .collect();
        assert_eq!(fields, ["actions[3].points", "actions[4].segment"]);
        assert_eq!(invalid.status(), 422);
        let (_, e) = first_error(json!({"actions": []}));
        assert_eq!(e.field.as_deref(), Some("actions"));
        let too_many: Vec<Value> = (0..501)
            .map(|_| json!({"action": "add_to_segment", "trifft_id": M, "segment": "vip"}))
            .collect();
        let (status, e) = first_error(json!({ "actions": too_many }));
        assert_eq!((status, e.code), (422, ErrorCode::LimitExceeded));
        let five_hundred: Vec<Value> = (0..500)
            .map(|_| json!({"action": "add_to_segment", "trifft_id": M, "segment": "vip"}))
            .collect();
        assert_eq!(
            parse(json!({ "actions": five_hundred }))
                .unwrap()
                .actions
                .len(),
            500
        );
    }

    #[test]
    fn unknown_and_unused_fields_are_warnings() {
        let r = parse(json!({
            "action": "add_to_segment", "member": {"trifft_id": M, "email": "x@example.com"},
            "segment": "vip", "points": 5, "colour": "blue"
        }))
        .unwrap();
        let fields: Vec<_> = r.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(fields, ["member.email", "points", "colour"]);
        let r = parse(json!({"actions": [{"action": "add_to_segment", "trifft_id": M, "segment": "vip", "x": 1}], "source": "flow-7"})).unwrap();
        let fields: Vec<_> = r.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(fields, ["source", "actions[0].x"]);
    }

    #[test]
    fn allowlists() {
        let settings = WebhookSettings {
            allowed_coupon_ids: ["c-1".to_string()].into(),
            allowed_segments: ["vip".to_string()].into(),
            ..Default::default()
        };
        let ok = json!({"actions": [
            {"action": "assign_coupon", "trifft_id": M, "coupon_id": "c-1"},
            {"action": "remove_from_segment", "trifft_id": M, "segment": "vip"},
        ]});
        assert!(parse_request(ok.to_string().as_bytes(), &settings).is_ok());
        let bad = json!({"actions": [
            {"action": "assign_coupon", "trifft_id": M, "coupon_id": "c-2"},
            {"action": "add_to_segment", "trifft_id": M, "segment": "gold"},
        ]});
        let invalid = parse_request(bad.to_string().as_bytes(), &settings).unwrap_err();
        let got: Vec<_> = invalid
            .errors
            .iter()
            .map(|e| (e.code, e.field.clone().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (ErrorCode::NotAllowed, "actions[0].coupon_id".into()),
                (ErrorCode::NotAllowed, "actions[1].segment".into())
            ]
        );
    }

    #[test]
    fn member_id_forms() {
        let r = parse(json!({"action": "add_to_segment", "member": {"trifft_id": M}, "trifft_id": M, "segment": "vip"})).unwrap();
        assert_eq!(r.actions[0].trifft_id, M);
        let (_, e) = first_error(
            json!({"action": "add_to_segment", "member": {"trifft_id": M}, "trifft_id": "other", "segment": "vip"}),
        );
        assert_eq!(e.field.as_deref(), Some("member.trifft_id"));
    }

    #[test]
    fn reason_and_key_lengths() {
        let long = "r".repeat(256);
        let (_, e) = first_error(
            json!({"action": "credit_points", "trifft_id": M, "points": 1, "reason": long}),
        );
        assert_eq!(e.field.as_deref(), Some("reason"));
        let ok = "é".repeat(255);
        assert!(
            parse(json!({"action": "credit_points", "trifft_id": M, "points": 1, "reason": ok}))
                .is_ok()
        );
        let (_, e) = first_error(
            json!({"action": "credit_points", "trifft_id": M, "points": 1, "idempotency_key": "k".repeat(256)}),
        );
        assert_eq!(e.field.as_deref(), Some("idempotency_key"));
    }

    #[test]
    fn fields_of_a_single_action_beside_actions_are_refused() {
        let (status, e) = first_error(
            json!({"actions": [{"action": "add_to_segment", "trifft_id": M, "segment": "vip"}], "points": 5}),
        );
        assert_eq!((status, e.field.as_deref()), (400, Some("points")));
    }
}
