//! What started the run: an EventBridge Scheduler (ScheduleV2) `Input`, or a classic
//! scheduled-event envelope (EventBridge rule), which is always an incremental run.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use loyalty_bridge::{Error, Result};

/// Incremental: what changed since the checkpoint. Backfill: the whole history, with
/// Klaviyo's `backfill` flag so old events do not trigger flows, on its own checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Incremental,
    Backfill,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Incremental => "incremental",
            Mode::Backfill => "backfill",
        }
    }
}

/// Which kind of schedule sent the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerSource {
    /// EventBridge Scheduler with the Input of DESIGN §7.
    Scheduler,
    /// A classic EventBridge rule (`detail-type: Scheduled Event`).
    ScheduledEvent,
    /// A test or a manual call of `run_sync`.
    Direct,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trigger {
    pub mode: Mode,
    pub source: TriggerSource,
    pub scheduled_time: Option<DateTime<Utc>>,
    /// Scheduler's execution id, or the scheduled event's id: for tracing a run in logs.
    pub execution_id: Option<String>,
}

impl Trigger {
    pub fn direct(mode: Mode) -> Self {
        Trigger {
            mode,
            source: TriggerSource::Direct,
            scheduled_time: None,
            execution_id: None,
        }
    }
}

/// The Scheduler `Input` of DESIGN §7. Unknown keys are refused: a typo in the template
/// (`"Mode"`) must not silently run an incremental sync.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerInput {
    #[serde(default)]
    scheduled_time: Option<String>,
    #[serde(default)]
    execution_id: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

const EXPECTED: &str = "expected the Scheduler input {\"scheduled_time\", \"execution_id\", \"mode\": \
     \"incremental\"|\"backfill\"} or an EventBridge \"Scheduled Event\"";

/// Read the invocation payload. Anything that is not one of the two schedule shapes is an
/// `Error::InvalidInput` (NonRetryable): retrying the same payload cannot help.
pub fn parse_trigger(event: &Value) -> Result<Trigger> {
    let Some(object) = event.as_object() else {
        return Err(Error::invalid(
            "event",
            format!("not a JSON object; {EXPECTED}"),
        ));
    };
    if object.contains_key("detail-type") {
        let envelope: EventBridgeEvent = serde_json::from_value(event.clone())
            .map_err(|e| Error::invalid("event", format!("{e}; {EXPECTED}")))?;
        if envelope.detail_type != "Scheduled Event" {
            return Err(Error::invalid(
                "detail-type",
                format!(
                    "{:?} is not \"Scheduled Event\"; {EXPECTED}",
                    envelope.detail_type
                ),
            ));
        }
        return Ok(Trigger {
            mode: Mode::Incremental,
            source: TriggerSource::ScheduledEvent,
            scheduled_time: envelope.time,
            execution_id: envelope.id,
        });
    }
    if object.is_empty() {
        return Err(Error::invalid("event", format!("empty object; {EXPECTED}")));
    }
    let input: SchedulerInput = serde_json::from_value(event.clone())
        .map_err(|e| Error::invalid("event", format!("{e}; {EXPECTED}")))?;
    let mode = match input.mode.as_deref().map(str::trim) {
        None | Some("incremental") => Mode::Incremental,
        Some("backfill") => Mode::Backfill,
        Some(other) => {
            return Err(Error::invalid(
                "mode",
                format!("{other:?} is not \"incremental\" or \"backfill\""),
            ));
        }
    };
    let scheduled_time = match input
        .scheduled_time
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        None => None,
        Some(text) if text.starts_with("<aws.scheduler") => {
            return Err(Error::invalid(
                "scheduled_time",
                format!(
                    "{text:?}: the Scheduler context attribute was not substituted (set it in the schedule's Input)"
                ),
            ));
        }
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|e| {
                    Error::invalid(
                        "scheduled_time",
                        format!("{text:?} is not an RFC 3339 time: {e}"),
                    )
                })?
                .to_utc(),
        ),
    };
    Ok(Trigger {
        mode,
        source: TriggerSource::Scheduler,
        scheduled_time,
        execution_id: input.execution_id.filter(|id| !id.trim().is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use loyalty_bridge::ErrorClass;
    use serde_json::json;

    #[test]
    fn scheduler_input_in_both_modes() {
        let t = parse_trigger(&json!({
            "scheduled_time": "2026-12-01T10:15:00Z", "execution_id": "e-1", "mode": "backfill"
        }))
        .unwrap();
        assert_eq!(t.mode, Mode::Backfill);
        assert_eq!(t.source, TriggerSource::Scheduler);
        assert_eq!(t.execution_id.as_deref(), Some("e-1"));
        assert!(t.scheduled_time.is_some());
        let t = parse_trigger(
            &json!({"scheduled_time": "2026-12-01T10:15:00Z", "execution_id": "e-2"}),
        )
        .unwrap();
        assert_eq!(t.mode, Mode::Incremental);
    }

    #[test]
    fn classic_scheduled_event_is_incremental() {
        let t = parse_trigger(&json!({
            "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012", "time": "2026-12-01T10:15:00Z",
            "region": "eu-central-1", "resources": ["arn:aws:events:eu-central-1:123456789012:rule/sync"], "detail": {}
        }))
        .unwrap();
        assert_eq!(t.mode, Mode::Incremental);
        assert_eq!(t.source, TriggerSource::ScheduledEvent);
    }

    #[test]
    fn anything_else_is_a_clear_non_retryable_error() {
        let cases = [
            (json!([1, 2]), "event"),
            (json!({}), "event"),
            (json!({"mode": "full"}), "mode"),
            (json!({"Mode": "backfill"}), "event"),
            (json!({"scheduled_time": "yesterday"}), "scheduled_time"),
            (
                json!({"scheduled_time": "<aws.scheduler.scheduled-time>"}),
                "scheduled_time",
            ),
            (
                json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}}),
                "detail-type",
            ),
            (json!({"detail-type": "Scheduled Event"}), "event"),
        ];
        for (event, field) in cases {
            let e = parse_trigger(&event).unwrap_err();
            assert_eq!(e.class(), ErrorClass::NonRetryable, "{event}");
            assert!(
                matches!(&e, Error::InvalidInput { field: f, .. } if f == field),
                "{event}: {e}"
            );
        }
    }
}
