//! What messaging counts for each batch and each send, with handles registered once: a
//! `counter!` call finds its series in the recorder's registry again on each call (hashing and
//! comparing name and labels), and a batch moved some thirty of them, per message at low rates.

use connect_core::messaging::{Phases, StepReport};
use metrics::{counter, histogram, Counter, Histogram};

pub struct BatchMetrics {
    /// One handle per [`StepReport::counts`] entry, in its order (`None`: not published per
    /// batch).
    counts: Vec<Option<Counter>>,
    replicas_out: Counter,
    prepare: Histogram,
    /// `connect_messaging_phase_seconds`, one per phase in [`Phases::named`]'s order.
    phases: Vec<Histogram>,
    batch_size: Histogram,
    /// `connect_messaging_wait_seconds`: gateway → messaging, per send.
    pub wait: Histogram,
    /// `connect_messaging_replica_age_seconds`: home acceptance → here, per replica.
    pub replica_age: Histogram,
}

impl BatchMetrics {
    /// Made after the recorder is installed (before, the handles count nowhere).
    pub fn register() -> Self {
        Self {
            counts: StepReport::default()
                .counts()
                .iter()
                .map(|(name, _)| count_metric(name))
                .collect(),
            replicas_out: counter!("connect_messaging_replicas_out_total"),
            prepare: histogram!("connect_messaging_prepare_seconds"),
            phases: Phases::default()
                .named()
                .iter()
                .map(|(phase, _)| histogram!("connect_messaging_phase_seconds", "phase" => *phase))
                .collect(),
            batch_size: histogram!("connect_messaging_batch_size"),
            wait: histogram!("connect_messaging_wait_seconds"),
            replica_age: histogram!("connect_messaging_replica_age_seconds"),
        }
    }

    /// A published batch's counts (and the replicas it sent to other regions).
    pub fn published(&self, report: &StepReport, replicas: usize) {
        for (handle, (_, n)) in self.counts.iter().zip(report.counts()) {
            if let Some(handle) = handle {
                handle.increment(n as u64);
            }
        }
        self.replicas_out.increment(replicas as u64);
    }

    /// A prepared batch of `size` records: how long it took, in all and per phase.
    pub fn prepared(&self, size: usize, took: std::time::Duration, phases: &Phases) {
        self.prepare.record(took.as_secs_f64());
        for (h, (_, took)) in self.phases.iter().zip(phases.named()) {
            h.record(took.as_secs_f64());
        }
        self.batch_size.record(size as f64);
    }
}

/// The counter a batch's count goes to, by the count's name in [`StepReport::counts`]; every
/// count is named here (a new one without a line stops the start, and the test below).
fn count_metric(name: &str) -> Option<Counter> {
    Some(match name {
        "stored" => counter!("connect_messaging_stored_total"),
        "duplicates" => counter!("connect_messaging_duplicates_total"),
        "rejected" => counter!("connect_messaging_rejected_total"),
        "unavailable" => counter!("connect_messaging_unavailable_total"),
        "deliveries" => counter!("connect_messaging_deliveries_out_total"),
        "shed" => counter!("connect_messaging_shed_total"),
        "log_retries" => counter!("connect_messaging_log_retries_total"),
        "markers" => counter!("connect_messaging_markers_total"),
        "pushes" => counter!("connect_messaging_pushes_total"),
        "marker_retries" => counter!("connect_messaging_marker_retries_total"),
        "typing" => counter!("connect_messaging_typing_total", "result" => "sent"),
        "typing_dropped" => counter!("connect_messaging_typing_total", "result" => "dropped"),
        "seq_conflicts" => counter!("connect_messaging_seq_conflicts_total"),
        "lookup_retries" => counter!("connect_messaging_lookup_retries_total"),
        "forwarded" => counter!("connect_messaging_forwarded_total"),
        "relayed" => counter!("connect_messaging_relayed_total"),
        // Counted where they happen (`connect_messaging_retried_total` in the consume loop) or
        // not at all (the log appends: `stored` says as much).
        "logged" | "retried" => return None,
        other => panic!("StepReport count {other} has no metric (messaging/src/metrics.rs)"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_count_of_a_batch_has_its_metric() {
        let metrics = super::BatchMetrics::register();
        assert_eq!(
            metrics.counts.len(),
            connect_core::messaging::StepReport::default()
                .counts()
                .len()
        );
    }
}
