//! Presence in messaging (`connect_core::presence`), beside the message path and never in its
//! way: its own consumer group, its own batches.
//!
//! - [`relay`]: every region's transitions (`presence`, and `<peer>.presence` from MirrorMaker
//!   2) → the views → one delivery per watching gateway on `outgoing_messages`. Never retried:
//!   a change that cannot be relayed is logged and counted; the next one corrects it.
//! - [`sweep`]: the due offline checks (after the debounce; a dead gateway's sessions expired)
//!   → transitions on `presence`. Several messaging processes may sweep at once.

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use tokio::sync::watch;
use tracing::{debug, info_span, warn, Instrument};

use connect_core::ports::DeliveryBus;
use connect_core::presence::{PresenceBus, PresenceChange, PresenceStore};
use connect_kafka::rdkafka::Message;
use connect_kafka::GroupConsumer;

/// Relays transitions until `stop`.
pub async fn relay(
    consumer: GroupConsumer,
    store: Arc<dyn PresenceStore>,
    deliveries: Arc<dyn DeliveryBus>,
    batch_max: usize,
    mut stop: watch::Receiver<bool>,
) {
    let decode = |m: &connect_kafka::rdkafka::message::BorrowedMessage<'_>| {
        let change = connect_kafka::codec::decode_json::<PresenceChange>(m.payload()?);
        change
            .inspect_err(
                |e| warn!(cause = %e, topic = m.topic(), "undecodable presence record skipped"),
            )
            .ok()
    };
    while let Some(batch) = consumer.next_batch(batch_max, decode, &mut stop).await {
        let (changes, next_offsets) = batch.into_items();
        if !changes.is_empty() {
            let span = info_span!("presence_batch", changes = changes.len());
            async {
                counter!("connect_messaging_presence_changes_total")
                    .increment(changes.len() as u64);
                match connect_core::presence::relay(&*store, &changes, connect_core::now_ms()).await
                {
                    Ok(out) => {
                        counter!("connect_messaging_presence_deliveries_total")
                            .increment(out.len() as u64);
                        if let Err(e) = deliveries.publish(&out).await {
                            counter!("connect_messaging_presence_dropped_total")
                                .increment(out.len() as u64);
                            warn!(cause = %e, "presence deliveries not published; dropped");
                        }
                    }
                    Err(e) => {
                        counter!("connect_messaging_presence_dropped_total")
                            .increment(changes.len() as u64);
                        warn!(cause = %e, "presence views unavailable; changes dropped");
                    }
                }
            }
            .instrument(span)
            .await;
        }
        consumer.commit(&next_offsets);
    }
    consumer.close().await;
}

/// Sweeps the due offline checks every `every` (at once again while a sweep finds `limit`),
/// until `stop`.
pub async fn sweep(
    store: Arc<dyn PresenceStore>,
    bus: Arc<dyn PresenceBus>,
    every: Duration,
    limit: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut full = false;
    loop {
        if !full {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(every) => {}
            }
        }
        full = false;
        match store.sweep(connect_core::now_ms(), limit).await {
            Ok(changes) if changes.is_empty() => {}
            Ok(changes) => {
                full = changes.len() >= limit;
                counter!("connect_messaging_presence_offline_total")
                    .increment(changes.len() as u64);
                debug!(count = changes.len(), "users went offline");
                if let Err(e) = bus.publish(&changes).await {
                    counter!("connect_messaging_presence_dropped_total")
                        .increment(changes.len() as u64);
                    warn!(cause = %e, count = changes.len(), "offline transitions not published");
                }
            }
            Err(e) => warn!(cause = %e, "presence sweep failed; next round retries"),
        }
    }
}
