//! What the Lambda triggers deliver, read into the domain's terms: the `user_connected`
//! records of an MSK event (`offline-delivery`) and the group changes of the group table's
//! DynamoDB stream (`group-events`). Pure functions over the events' types, so the fuzz targets
//! (`fuzz/`) run them on arbitrary input without a backend.

use std::collections::BTreeMap;

use aws_lambda_events::event::dynamodb::Event;
use base64::Engine;
use serde::Deserialize;
use tracing::warn;

use connect_core::groups::GroupChange;
use connect_core::model::UserConnected;

/// What a trigger's handler makes of a failure, for its event source mapping (an MSK topic's
/// partition, a DynamoDB stream's shard), which retries a failed batch until it passes: a
/// failure that may pass fails the invocation (or the item) so that it comes again; a final one
/// must not (it would come again forever and hold up everything behind it on its partition or
/// shard), so the handler counts it (`connect_trigger_dead_letters_total{function}`), logs it
/// and goes on. [`TriggerError::decide`] sorts a port's error into the two.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// Fails the invocation: the batch comes again.
    #[error("{0} (retryable: the batch comes again)")]
    Retryable(String),
}

impl TriggerError {
    /// `Err` for an error that may pass; `Ok` (after counting and logging it as dead-lettered)
    /// for a final one.
    pub fn decide(
        function: &'static str,
        what: &str,
        error: connect_core::PortError,
    ) -> Result<(), TriggerError> {
        if error.is_retryable() {
            return Err(TriggerError::Retryable(format!("{what}: {error}")));
        }
        metrics::counter!("connect_trigger_dead_letters_total", "function" => function)
            .increment(1);
        tracing::error!(function, what, cause = %error, "final failure: dead-lettered, not retried");
        Ok(())
    }
}

#[cfg(feature = "lambda")]
impl From<TriggerError> for lambda_runtime::Diagnostic {
    fn from(e: TriggerError) -> Self {
        let error_type = match &e {
            TriggerError::Retryable(_) => "Retryable",
        };
        lambda_runtime::Diagnostic {
            error_type: error_type.into(),
            error_message: e.to_string(),
        }
    }
}

/// An MSK trigger's event, as much of it as `offline-delivery` reads: the records by
/// `topic-partition`, each with its offset and base64 value. (`aws_lambda_events`' `KafkaEvent`
/// panics on a record timestamp with a fraction, which the fuzz target found; the fields read
/// here have no such parser.)
#[derive(Debug, Default, Deserialize)]
pub struct MskEvent {
    #[serde(default)]
    pub records: BTreeMap<String, Vec<MskRecord>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct MskRecord {
    #[serde(default)]
    pub offset: i64,
    #[serde(default)]
    pub value: Option<String>,
}

/// The `user_connected` records of an MSK event, in partition order; undecodable ones are
/// logged and skipped (they would never decode).
pub fn user_connected(event: &MskEvent) -> Vec<UserConnected> {
    records(event)
}

/// The records of an MSK event whose values are JSON `T`s (`user_connected`, `push_requests`),
/// in partition order; undecodable ones are logged and skipped (they would never decode).
pub fn records<T: serde::de::DeserializeOwned>(event: &MskEvent) -> Vec<T> {
    event
        .records
        .values()
        .flatten()
        .filter_map(|r| {
            let value = r.value.as_deref()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .map_err(|e| warn!(cause = %e, offset = r.offset, "value is not base64; skipped"))
                .ok()?;
            serde_json::from_slice(&bytes)
                .map_err(
                    |e| warn!(cause = %e, offset = r.offset, "not a record of this topic; skipped"),
                )
                .ok()
        })
        .collect()
}

/// The group changes of a stream event, each with the sequence number that identifies its
/// record; records that are no group change are skipped.
pub fn group_changes(event: &Event) -> Vec<(Option<String>, GroupChange)> {
    event
        .records
        .iter()
        .filter_map(|r| {
            let new = serde_json::to_value(&r.change.new_image).unwrap_or_default();
            let old = serde_json::to_value(&r.change.old_image).unwrap_or_default();
            let change = GroupChange::from_record(&r.event_id, &r.event_name, &new, &old)?;
            Some((r.change.sequence_number.clone(), change))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_that_may_pass_fails_the_batch_and_a_final_one_does_not() {
        use connect_core::PortError;
        let retryable = TriggerError::decide(
            "t",
            "publishing",
            PortError::unavailable("kafka", "timed out"),
        );
        assert!(matches!(retryable, Err(TriggerError::Retryable(m)) if m.contains("timed out")));
        let final_one =
            TriggerError::decide("t", "publishing", PortError::rejected("kafka", "too large"));
        assert_eq!(final_one, Ok(()));
    }

    #[test]
    fn the_sample_kafka_event_decodes() {
        let event: MskEvent =
            serde_json::from_str(include_str!("../../../events/offline-delivery.json")).unwrap();
        let got = user_connected(&event);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].user.as_str(), "bob");
        assert_eq!(got[0].endpoint, "http://127.0.0.1:8081");
    }

    #[test]
    fn a_timestamp_with_a_fraction_is_read_past() {
        // The input the fuzz target found: aws_lambda_events' KafkaEvent panics on it.
        let event: MskEvent = serde_json::from_str(
            r#"{"records":{"user_connected-0":[{"offset":3,"timestamp":176380.000123,"value":"eyJ4IjoxfQ=="}]}}"#,
        )
        .unwrap();
        assert_eq!(event.records["user_connected-0"][0].offset, 3);
        assert!(
            user_connected(&event).is_empty(),
            "not a user_connected record"
        );
    }

    #[test]
    fn the_sample_stream_event_is_a_member_added() {
        let event: Event =
            serde_json::from_str(include_str!("../../../events/group-events.json")).unwrap();
        let got = group_changes(&event);
        assert_eq!(got.len(), 1);
        let (seq, change) = &got[0];
        assert_eq!(seq.as_deref(), Some("4421584500000000017450439091"));
        assert_eq!((change.kind, change.by.as_str()), ("member_added", "bob"));
        assert_eq!(change.user.as_ref().unwrap().as_str(), "dave");
    }
}
