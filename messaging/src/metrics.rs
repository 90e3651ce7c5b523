//! What messaging counts for each batch and each send, with handles registered once: a
//! `counter!` call finds its series in the recorder's registry again on each call (hashing and
//! comparing name and labels), and a batch moved some thirty of them, per message at low rates.

use connect_core::messaging::{Phases, StepReport};
use metrics::{counter, histogram, Counter, Histogram};

pub struct BatchMetrics {
    stored: Counter,
    duplicates: Counter,
    rejected: Counter,
    unavailable: Counter,
    deliveries_out: Counter,
    shed: Counter,
    log_retries: Counter,
    markers: Counter,
    pushes: Counter,
    marker_retries: Counter,
    typing_sent: Counter,
    typing_dropped: Counter,
    seq_conflicts: Counter,
    lookup_retries: Counter,
    forwarded: Counter,
    relayed: Counter,
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
            stored: counter!("connect_messaging_stored_total"),
            duplicates: counter!("connect_messaging_duplicates_total"),
            rejected: counter!("connect_messaging_rejected_total"),
            unavailable: counter!("connect_messaging_unavailable_total"),
            deliveries_out: counter!("connect_messaging_deliveries_out_total"),
            shed: counter!("connect_messaging_shed_total"),
            log_retries: counter!("connect_messaging_log_retries_total"),
            markers: counter!("connect_messaging_markers_total"),
            pushes: counter!("connect_messaging_pushes_total"),
            marker_retries: counter!("connect_messaging_marker_retries_total"),
            typing_sent: counter!("connect_messaging_typing_total", "result" => "sent"),
            typing_dropped: counter!("connect_messaging_typing_total", "result" => "dropped"),
            seq_conflicts: counter!("connect_messaging_seq_conflicts_total"),
            lookup_retries: counter!("connect_messaging_lookup_retries_total"),
            forwarded: counter!("connect_messaging_forwarded_total"),
            relayed: counter!("connect_messaging_relayed_total"),
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
        self.stored.increment(report.stored as u64);
        self.duplicates.increment(report.duplicates as u64);
        self.rejected.increment(report.rejected as u64);
        self.unavailable.increment(report.unavailable as u64);
        self.deliveries_out.increment(report.deliveries as u64);
        self.shed.increment(report.shed as u64);
        self.log_retries.increment(report.log_retries as u64);
        self.markers.increment(report.markers as u64);
        self.pushes.increment(report.pushes as u64);
        self.marker_retries.increment(report.marker_retries as u64);
        self.typing_sent.increment(report.typing as u64);
        self.typing_dropped.increment(report.typing_dropped as u64);
        self.seq_conflicts.increment(report.seq_conflicts as u64);
        self.lookup_retries.increment(report.lookup_retries as u64);
        self.forwarded.increment(report.forwarded as u64);
        self.relayed.increment(report.relayed as u64);
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
