//! `connect-loadgen --sample-secs N --csv FILE`: during the measured window, one CSV row every
//! N seconds: throughput, delivery latency of that interval, messaging's consumer lag on
//! `incoming_messages`, and each stack process's RSS and CPU. `scripts/plot-soak.py` draws it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connect_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use connect_kafka::rdkafka::{Offset, TopicPartitionList};
use hdrhistogram::Histogram;

use connect_bench::procs::{proc_usage, processes_of};

/// What the connections saw since the last row.
pub struct Interval {
    pub sent: u64,
    pub delivered: Histogram<u64>,
    pub accepted: Histogram<u64>,
    pub errors: u64,
}

pub type Shared = Arc<Mutex<Interval>>;

pub fn shared() -> Shared {
    Arc::new(Mutex::new(Interval {
        sent: 0,
        delivered: super::hist(),
        accepted: super::hist(),
        errors: 0,
    }))
}

/// messaging's consumer group lag on the incoming topic: records not yet committed.
struct Lag {
    consumer: BaseConsumer,
    topic: String,
}

impl Lag {
    fn new() -> Option<Self> {
        let kafka = connect_kafka::KafkaConfig::from_settings(&connect_bench::settings()).ok()?;
        let group = connect_bench::settings().string("MESSAGING_GROUP_ID", "messaging");
        let consumer: BaseConsumer = kafka.consumer(&group).create().ok()?;
        Some(Self {
            consumer,
            topic: connect_kafka::Topics::from_settings(&connect_bench::settings()).incoming,
        })
    }

    fn read(&self) -> Option<i64> {
        let timeout = Duration::from_secs(5);
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .ok()?;
        let partitions = metadata.topics().first()?.partitions().len() as i32;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = self.consumer.committed_offsets(tpl, timeout).ok()?;
        let mut lag = 0;
        for e in committed.elements() {
            let (_, high) = self
                .consumer
                .fetch_watermarks(&self.topic, e.partition(), timeout)
                .ok()?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            lag += (high - at).max(0);
        }
        Some(lag)
    }
}

/// Writes a row every `every` until `until` (then returns).
pub async fn sample(
    interval: Shared,
    every: Duration,
    until: Instant,
    csv: PathBuf,
    pids: Vec<PathBuf>,
) -> anyhow::Result<()> {
    let procs = processes_of(&pids);
    let lag = tokio::task::spawn_blocking(Lag::new).await?.map(Arc::new);
    let mut out = std::fs::File::create(&csv)?;
    let mut header = vec![
        "t_s",
        "sent_per_s",
        "delivered_per_s",
        "delivered_p50_ms",
        "delivered_p99_ms",
        "delivered_max_ms",
        "accepted_p99_ms",
        "errors",
        "incoming_lag",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    for (name, _) in &procs {
        header.push(format!("rss_mib:{name}"));
        header.push(format!("cpu_cores:{name}"));
    }
    writeln!(out, "{}", header.join(","))?;
    let start = Instant::now();
    let mut last = Instant::now();
    let mut cpu: Vec<f64> = procs
        .iter()
        .map(|(_, pid)| proc_usage(*pid).map_or(0.0, |u| u.0))
        .collect();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    while Instant::now() < until {
        tick.tick().await;
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        let taken = {
            let mut i = interval.lock().unwrap_or_else(|p| p.into_inner());
            let taken = (i.sent, i.delivered.clone(), i.accepted.clone(), i.errors);
            i.sent = 0;
            i.delivered.reset();
            i.accepted.reset();
            i.errors = 0;
            taken
        };
        let (sent, delivered, accepted, errors) = taken;
        // The blocking Kafka calls run off the runtime's threads.
        let lag_now = match lag.clone() {
            Some(lag) => tokio::task::spawn_blocking(move || lag.read()).await?,
            None => None,
        };
        let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut row = vec![
            format!("{:.0}", start.elapsed().as_secs_f64()),
            format!("{:.1}", sent as f64 / secs),
            format!("{:.1}", delivered.len() as f64 / secs),
            format!("{:.2}", q(&delivered, 0.5)),
            format!("{:.2}", q(&delivered, 0.99)),
            format!("{:.2}", delivered.max() as f64 / 1000.0),
            format!("{:.2}", q(&accepted, 0.99)),
            errors.to_string(),
            lag_now.map_or(String::new(), |l| l.to_string()),
        ];
        for (i, (_, pid)) in procs.iter().enumerate() {
            match proc_usage(*pid) {
                Some((c, rss)) => {
                    row.push(format!("{:.1}", rss as f64 / 1024.0));
                    row.push(format!("{:.3}", (c - cpu[i]) / secs));
                    cpu[i] = c;
                }
                None => row.extend([String::new(), String::new()]),
            }
        }
        writeln!(out, "{}", row.join(","))?;
        out.flush()?;
    }
    Ok(())
}
