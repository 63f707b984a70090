//! The 15 standard metrics and 13 profile attributes from TRIFFT to Klaviyo, on a schedule.
//!
//! Triggered by EventBridge Scheduler (`{"scheduled_time", "execution_id", "mode"}`) or a
//! classic scheduled event (incremental). Each run pages TRIFFT's members and activity
//! feeds from the checkpoint, sends profiles through bulk import jobs and events through
//! bulk event jobs, and moves the checkpoint only past what Klaviyo accepted (DESIGN §6-§7).

pub mod settings;
pub mod summary;
pub mod sync;
pub mod trigger;

use std::sync::Arc;

use lambda_runtime::LambdaEvent;
use serde_json::Value;

use loyalty_bridge::klaviyo::KlaviyoApi;
use loyalty_bridge::state::StateStore;
use loyalty_bridge::trifft::TrifftApi;
use loyalty_bridge::{Deadline, Error};

pub use settings::SyncSettings;
pub use summary::{SyncSummary, emf_line};
pub use sync::{Checkpoint, checkpoint_name, run_sync};
pub use trigger::{Mode, Trigger, TriggerSource, parse_trigger};

/// What the handler needs, built once per process in main.rs.
pub struct Deps {
    pub trifft: Arc<dyn TrifftApi>,
    pub klaviyo: Arc<dyn KlaviyoApi>,
    pub state: Arc<dyn StateStore>,
    pub settings: SyncSettings,
}

/// The Lambda handler: read the trigger, run until the invocation deadline less the
/// safety margin, return the summary. A payload that is neither schedule shape is a
/// NonRetryable error before anything is read or sent.
pub async fn handler(deps: &Deps, event: LambdaEvent<Value>) -> Result<SyncSummary, Error> {
    let deadline = Deadline::from_epoch_millis(event.context.deadline);
    let trigger = parse_trigger(&event.payload)
        .inspect_err(|e| tracing::error!(error = %e, "not a schedule event"))?;
    tracing::info!(mode = trigger.mode.as_str(), source = ?trigger.source, execution_id = ?trigger.execution_id, "standard sync starting");
    run_sync(deps, trigger, deadline).await
}
