//! Offline delivery: drain a user's offline store to the connection that just came up
//! (the offline-delivery function, on a `user_connected` record).
//!
//! Entries are pushed in seq order per conversation and stay in the store: they leave it only
//! when the client acks them, so a push that is lost with its connection is pushed again on the
//! next one (at least once; clients drop `(conversation, seq)` repeats).

use connect_protocol::UserId;

use crate::model::{OfflineEntry, UserConnected};
use crate::ports::{ConnectionEvents, ConnectionPusher, OfflineStore, PushError, SessionRegistry};
use crate::PortError;

/// What one drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub pushed: usize,
    /// The connection went away (410) before the store was drained; the rest waits for the next.
    pub gone: bool,
}

/// Pushes every entry of `event.user`'s store to `event.conn`, `page` entries per store read.
/// `Err` means a backend failed: the invocation should be retried (pushing again is harmless).
pub async fn drain(
    store: &dyn OfflineStore,
    pusher: &dyn ConnectionPusher,
    event: &UserConnected,
    page: usize,
) -> Result<DrainReport, PortError> {
    let mut report = DrainReport::default();
    for conversation in store.conversations(&event.user).await? {
        let mut after = 0;
        loop {
            let entries = store
                .page(&event.user, &conversation, after, page.max(1))
                .await?;
            let last_page = entries.len() < page.max(1);
            for (seq, frame) in entries {
                match pusher.post(&event.endpoint, &event.conn, &frame).await {
                    Ok(()) => report.pushed += 1,
                    Err(PushError::Gone) => {
                        report.gone = true;
                        return Ok(report);
                    }
                    Err(PushError::Failed(e)) => return Err(e),
                }
                after = seq;
            }
            if last_page {
                break;
            }
        }
    }
    Ok(report)
}

/// What [`park_unacked`] needs.
#[derive(Clone, Copy)]
pub struct ParkPorts<'a> {
    pub offline: &'a dyn OfflineStore,
    pub registry: &'a dyn SessionRegistry,
    pub events: &'a dyn ConnectionEvents,
}

/// Puts messages that were handed to connections and not acked (a closed connection's, or a
/// record's for users who left) back into their users' offline stores, in one write; then looks
/// those users up once and announces each of their live sessions (one that connected meanwhile
/// may have drained its store before the write). Call it after the closed sessions left the
/// registry.
pub async fn park_unacked(
    ports: ParkPorts<'_>,
    entries: Vec<OfflineEntry>,
) -> Result<usize, PortError> {
    ports.offline.append(&entries).await?;
    let mut users: Vec<UserId> = entries.iter().map(|e| e.user.clone()).collect();
    users.sort();
    users.dedup();
    let sessions = ports.registry.lookup(&users).await?;
    let announced = users.iter().zip(sessions).flat_map(|(user, routes)| {
        routes.into_iter().map(move |route| {
            let event = UserConnected {
                user: user.clone(),
                conn: route.conn,
                gateway: route.gateway,
                endpoint: route.endpoint,
                ts: crate::now_ms(),
            };
            ports.events.connected(&event)
        })
    });
    for result in futures_util::future::join_all(announced.collect::<Vec<_>>()).await {
        if let Err(e) = result {
            tracing::warn!(cause = %e, "could not announce a live session after parking");
        }
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use connect_protocol::UserId;

    use super::*;
    use crate::memory::Memory;
    use crate::model::OfflineEntry;

    fn entry(conv: &str, seq: u64) -> OfflineEntry {
        OfflineEntry {
            user: UserId::parse("bob").unwrap(),
            conversation: conv.into(),
            seq,
            frame: format!("{conv}#{seq}"),
        }
    }

    fn connected(conn: &str) -> UserConnected {
        UserConnected {
            user: UserId::parse("bob").unwrap(),
            conn: conn.into(),
            gateway: "gw".into(),
            endpoint: "http://gw".into(),
            ts: 0,
        }
    }

    #[tokio::test]
    async fn drains_in_seq_order_per_conversation_and_keeps_entries_until_acked() {
        let mem = Arc::new(Memory::default());
        let mut entries: Vec<_> = (1..=7).rev().map(|s| entry("dm:alice:bob", s)).collect();
        entries.push(entry("dm:bob:carol", 3));
        entries.push(entry("dm:alice:bob", 2)); // a repeat is kept once
        mem.append(&entries).await.unwrap();

        let report = drain(&*mem, &*mem, &connected("c1"), 3).await.unwrap();
        assert_eq!(
            report,
            DrainReport {
                pushed: 8,
                gone: false
            }
        );
        let pushed: Vec<String> = mem.take_pushed().into_iter().map(|(_, d)| d).collect();
        let mut want: Vec<String> = (1..=7).map(|s| format!("dm:alice:bob#{s}")).collect();
        want.push("dm:bob:carol#3".into());
        assert_eq!(pushed, want);

        let bob = UserId::parse("bob").unwrap();
        mem.ack(&bob, "dm:alice:bob", 5).await.unwrap();
        drain(&*mem, &*mem, &connected("c2"), 100).await.unwrap();
        let pushed: Vec<String> = mem.take_pushed().into_iter().map(|(_, d)| d).collect();
        assert_eq!(
            pushed,
            ["dm:alice:bob#6", "dm:alice:bob#7", "dm:bob:carol#3"]
        );
    }

    #[tokio::test]
    async fn parking_stores_the_entries_and_announces_live_sessions() {
        use crate::model::{Session, SessionRoute};
        use crate::ports::SessionRegistry;
        let mem = Arc::new(Memory::default());
        let bob = UserId::parse("bob").unwrap();
        let ports = ParkPorts {
            offline: &*mem,
            registry: &*mem,
            events: &*mem,
        };
        park_unacked(ports, vec![entry("dm:alice:bob", 4)])
            .await
            .unwrap();
        assert_eq!(mem.offline_seqs("bob", "dm:alice:bob"), [4]);
        assert!(mem.take_announced().is_empty());

        let route = SessionRoute {
            conn: "b2".into(),
            slot: 1,
            gateway: "gw1".into(),
            endpoint: "http://gw1".into(),
        };
        mem.upsert(&[Session {
            user: bob.clone(),
            route,
        }])
        .await
        .unwrap();
        park_unacked(ports, vec![entry("dm:alice:bob", 5)])
            .await
            .unwrap();
        assert_eq!(mem.offline_seqs("bob", "dm:alice:bob"), [4, 5]);
        let announced = mem.take_announced();
        assert_eq!(announced.len(), 1);
        assert_eq!(
            (announced[0].conn.as_str(), announced[0].endpoint.as_str()),
            ("b2", "http://gw1")
        );
    }

    #[tokio::test]
    async fn a_gone_connection_stops_the_drain_and_leaves_the_store() {
        let mem = Arc::new(Memory::default());
        mem.append(&[entry("dm:alice:bob", 1), entry("dm:alice:bob", 2)])
            .await
            .unwrap();
        mem.set_gone("c1");
        let report = drain(&*mem, &*mem, &connected("c1"), 10).await.unwrap();
        assert_eq!(
            report,
            DrainReport {
                pushed: 0,
                gone: true
            }
        );
        let report = drain(&*mem, &*mem, &connected("c2"), 10).await.unwrap();
        assert_eq!(report.pushed, 2);
    }
}
