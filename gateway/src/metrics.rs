//! The metrics the gateway moves for every message, registered once: a `counter!` call finds
//! its series in the recorder's registry again on each call (hashing and comparing the name and
//! labels: ~2,500 instructions per message under `connect-bench gateway`), a handle does not.

use metrics::{counter, histogram, Counter, Histogram};

pub struct HotMetrics {
    /// `connect_gateway_records_total{partition}`: records read from the slot.
    pub records: Counter,
    /// `connect_gateway_deliveries_total`: frames handed to connections' queues.
    pub deliveries: Counter,
    pub slow_consumers: Counter,
    pub signals_dropped: Counter,
    pub absent: Counter,
    /// `connect_delivery_latency_seconds`: a message's send → handed to its recipients here.
    pub delivery_latency: Histogram,
    pub frames_out: Counter,
    pub sends_published: Counter,
    pub acks: Counter,
    pub ack_writes: Counter,
    pub reads: Counter,
}

impl HotMetrics {
    /// The handles of the gateway on `slot`; made after the recorder is installed (before, they
    /// count nowhere).
    pub fn register(slot: u32) -> Self {
        Self {
            records: counter!("connect_gateway_records_total", "partition" => slot.to_string()),
            deliveries: counter!("connect_gateway_deliveries_total"),
            slow_consumers: counter!("connect_gateway_slow_consumers_total"),
            signals_dropped: counter!("connect_gateway_signals_dropped_total"),
            absent: counter!("connect_gateway_absent_total"),
            delivery_latency: histogram!("connect_delivery_latency_seconds"),
            frames_out: counter!("connect_gateway_frames_out_total"),
            sends_published: counter!("connect_gateway_sends_total", "result" => "published"),
            acks: counter!("connect_gateway_acks_total"),
            ack_writes: counter!("connect_gateway_ack_writes_total"),
            reads: counter!("connect_gateway_reads_total"),
        }
    }
}
