//! Reads this gateway's partition of `outgoing_messages` and hands each record to the hub.

use std::sync::Arc;
use std::time::Duration;

use connect_kafka::codec::{decode_record, CodecError};
use connect_kafka::rdkafka::consumer::Consumer;
use connect_kafka::rdkafka::message::Headers;
use connect_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use connect_kafka::{KafkaConfig, WatchedConsumer};
use tracing::warn;

use crate::state::Gateway;

/// A consumer assigned to `slot` only, starting at its end: records for earlier connections of
/// this slot are not ours (those connections are gone).
pub fn assigned_consumer(
    kafka: &KafkaConfig,
    topic: &str,
    slot: u32,
    group: &str,
) -> anyhow::Result<WatchedConsumer> {
    let consumer = kafka.create_consumer(group)?;
    let partition = slot as i32;
    // A broker that has just started may not have elected the partition's leader yet: retry
    // for a while instead of failing the gateway's start.
    let mut attempts = 0;
    let high = loop {
        let fetched = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))
        });
        match fetched {
            Ok((_, high)) => break high,
            Err(e) if attempts < 60 => {
                attempts += 1;
                warn!(cause = %e, "the slot's partition is not ready; retrying");
                tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(500)));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(high))?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

pub async fn run(consumer: WatchedConsumer, gw: Arc<Gateway>) {
    loop {
        let received = tokio::select! {
            () = gw.stopped() => return,
            r = consumer.recv() => r,
        };
        let record = match received {
            Ok(r) => r,
            Err(e) => {
                warn!(cause = %e, "outgoing_messages read failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        gw.metrics.records.increment(1);
        let offset = record.offset();
        hand_over(&gw, record.headers(), record.payload(), |e| {
            warn!(cause = %e, offset, "skipping an undecodable delivery");
        });
    }
}

/// Hands one record of the slot's partition (its headers and value) to the hub, delivery by
/// delivery; `undecodable` hears of each delivery that does not decode (the others still go).
/// What [`run`] does with each record read, and the harness of `connect-bench gateway` with each
/// record its in-process messaging encodes.
pub fn hand_over<H: Headers>(
    gw: &Gateway,
    headers: Option<&H>,
    payload: Option<&[u8]>,
    mut undecodable: impl FnMut(CodecError),
) {
    let now = connect_core::now_ms();
    let (mut frames, mut evicted, mut dropped, mut absent) = (0, 0, 0, 0);
    for delivery in decode_record(gw.slot, headers, payload) {
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                undecodable(e);
                continue;
            }
        };
        if let Some(m) = &delivery.message {
            gw.metrics
                .delivery_latency
                .record(now.saturating_sub(m.ts) as f64 / 1000.0);
        }
        let handed = gw.hub.deliver(delivery);
        frames += handed.frames;
        evicted += handed.evicted;
        dropped += handed.dropped;
        // Recipients who left after the registry lookup: their devices' next connections find
        // the message in the conversation's log.
        absent += handed.absent.len();
    }
    let m = &gw.metrics;
    m.deliveries.increment(frames as u64);
    m.slow_consumers.increment(evicted as u64);
    m.signals_dropped.increment(dropped as u64);
    m.absent.increment(absent as u64);
}
