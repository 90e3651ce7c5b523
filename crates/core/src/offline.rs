//! Offline delivery: push a device's backlog to the connection that just came up (the
//! offline-delivery function, on a `user_connected` record).
//!
//! The offline state is kept once per conversation ([`ConversationLog`]): a bounded log of each
//! conversation's recent frames, a per-user index of direct conversations, and a cursor per
//! (user, device, conversation) = the last seq that device acked. A device's backlog is every
//! conversation (its direct ones from the index, its groups from the membership index) whose
//! log runs past its cursor; each is pushed in seq order. Nothing is removed by a push: only an
//! ack moves the cursor, so a push lost with its connection comes again on the next one (at
//! least once; clients drop `(conversation, seq)` repeats). A message beyond the log's bound is
//! in history (`after=<seq>`).
//!
//! When the backlog is pushed, [`CAUGHT_UP`] is posted last: the gateway holds the connection's
//! live messages until then, so each conversation's backlog comes before newer live messages.

use serde::Deserialize;

use connect_protocol::ConversationId;

use crate::groups::GroupStore;
use crate::model::{LogEntry, UserConnected};
use crate::ports::{ConnectionPusher, ConversationLog, PushError};
use crate::PortError;

/// Posted after a device's backlog: the gateway releases the live messages it held for the
/// connection (and does not forward this to the client).
pub const CAUGHT_UP: &str = r#"{"type":"caught_up"}"#;

/// What one drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub pushed: usize,
    /// The connection went away (410) before the backlog was pushed; it waits for the next.
    pub gone: bool,
}

#[derive(Deserialize)]
struct Sender<'a> {
    #[serde(borrow)]
    from: &'a str,
}

/// What [`drain`] reads and pushes through.
#[derive(Clone, Copy)]
pub struct DrainPorts<'a> {
    pub log: &'a dyn ConversationLog,
    pub groups: &'a dyn GroupStore,
    pub pusher: &'a dyn ConnectionPusher,
}

/// Whether `entry` is for the connecting device: not a message it sent itself (it had
/// `accepted`; the sender's other devices get it), and for a group, not one sequenced before
/// the user joined (`since`: the membership version they joined at; an entry's version 0 is
/// unknown).
fn for_device(entry: &LogEntry, event: &UserConnected, since: u64) -> bool {
    if entry.mv != 0 && entry.mv < since {
        return false;
    }
    let own_device = entry.device.as_deref() == Some(event.device.as_str())
        && serde_json::from_str::<Sender<'_>>(&entry.frame)
            .is_ok_and(|s| s.from == event.user.as_str());
    !own_device
}

/// Pushes the backlog of `event`'s device to `event.conn`, `page` entries per log read, then
/// [`CAUGHT_UP`]. `Err` means a backend failed: the invocation should be retried (pushing again
/// is harmless).
pub async fn drain(
    ports: DrainPorts<'_>,
    event: &UserConnected,
    page: usize,
) -> Result<DrainReport, PortError> {
    let page = page.max(1);
    let mut report = DrainReport::default();
    // (conversation, head, since) of each conversation the device may have a backlog in.
    let mut logs: Vec<(String, u64, u64)> = ports
        .log
        .inbox(&event.user)
        .await?
        .into_iter()
        .map(|(conversation, head)| (conversation, head, 0))
        .collect();
    let memberships = ports.groups.memberships_of(&event.user).await?;
    let groups: Vec<String> = memberships
        .iter()
        .map(|m| ConversationId::group(m.group.clone()).to_string())
        .collect();
    let group_heads = ports.log.heads(&groups).await?;
    logs.extend(
        groups
            .into_iter()
            .zip(group_heads)
            .zip(&memberships)
            .map(|((conversation, head), m)| (conversation, head, m.since)),
    );
    logs.sort();
    let cursors = ports.log.cursors(&event.user, &event.device).await?;
    for (conversation, head, since) in logs {
        let mut after = cursors.get(&conversation).copied().unwrap_or(0);
        if after >= head {
            continue;
        }
        let Ok(id) = ConversationId::parse(&conversation) else {
            continue;
        };
        while after < head {
            let entries = ports.log.page(&id, after, page).await?;
            let last_page = entries.len() < page;
            for entry in entries {
                after = entry.seq;
                if !for_device(&entry, event, since) {
                    continue;
                }
                match ports
                    .pusher
                    .post(&event.endpoint, &event.conn, &entry.frame)
                    .await
                {
                    Ok(()) => report.pushed += 1,
                    Err(PushError::Gone) => {
                        report.gone = true;
                        return Ok(report);
                    }
                    Err(PushError::Failed(e)) => return Err(e),
                }
            }
            if last_page {
                break;
            }
        }
    }
    match ports
        .pusher
        .post(&event.endpoint, &event.conn, CAUGHT_UP)
        .await
    {
        Ok(()) => {}
        Err(PushError::Gone) => report.gone = true,
        Err(PushError::Failed(e)) => return Err(e),
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use connect_protocol::UserId;

    use super::*;
    use crate::memory::Memory;
    use crate::model::DEFAULT_DEVICE;

    fn u(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn entry(conv: &str, seq: u64, from: &str) -> LogEntry {
        LogEntry {
            conversation: ConversationId::parse(conv).unwrap(),
            seq,
            frame: serde_json::json!({"conversation": conv, "seq": seq, "from": from}).to_string(),
            mv: 0,
            device: Some("phone".into()),
        }
    }

    fn connected(conn: &str, device: &str) -> UserConnected {
        UserConnected {
            user: u("bob"),
            conn: conn.into(),
            gateway: "gw".into(),
            endpoint: "http://gw".into(),
            ts: 0,
            device: device.into(),
        }
    }

    fn ports(mem: &Memory) -> DrainPorts<'_> {
        DrainPorts {
            log: mem,
            groups: mem,
            pusher: mem,
        }
    }

    /// (conversation, seq) of what was pushed, markers as "caught_up".
    fn pushed(mem: &Memory) -> Vec<String> {
        mem.take_pushed()
            .into_iter()
            .map(|(_, d)| {
                let f: serde_json::Value = serde_json::from_str(&d).unwrap();
                match f["type"].as_str() {
                    Some("caught_up") => "caught_up".to_owned(),
                    _ => format!("{}#{}", f["conversation"].as_str().unwrap(), f["seq"]),
                }
            })
            .collect()
    }

    #[tokio::test]
    async fn each_device_gets_what_it_has_not_acked_in_seq_order() {
        let mem = Arc::new(Memory::default());
        let mut entries: Vec<_> = (1..=7)
            .rev()
            .map(|s| entry("dm:alice:bob", s, "alice"))
            .collect();
        entries.push(entry("dm:bob:carol", 3, "carol"));
        entries.push(entry("dm:alice:bob", 2, "alice")); // a repeat is kept once
                                                         // bob's own, sent from his phone: not pushed back to the phone, pushed to his laptop.
        entries.push(entry("dm:bob:carol", 4, "bob"));
        mem.append(&entries).await.unwrap();

        let report = drain(ports(&mem), &connected("c1", "phone"), 3)
            .await
            .unwrap();
        assert_eq!(
            report,
            DrainReport {
                pushed: 8,
                gone: false
            }
        );
        let mut want: Vec<String> = (1..=7).map(|s| format!("dm:alice:bob#{s}")).collect();
        want.push("dm:bob:carol#3".into());
        want.push("caught_up".into());
        assert_eq!(pushed(&mem), want);

        // The phone acks up to 5; the laptop acked nothing and still gets everything.
        mem.ack(&u("bob"), "phone", "dm:alice:bob", 5)
            .await
            .unwrap();
        mem.ack(&u("bob"), "phone", "dm:bob:carol", 4)
            .await
            .unwrap();
        drain(ports(&mem), &connected("c2", "phone"), 100)
            .await
            .unwrap();
        assert_eq!(
            pushed(&mem),
            ["dm:alice:bob#6", "dm:alice:bob#7", "caught_up"]
        );
        drain(ports(&mem), &connected("c3", "laptop"), 100)
            .await
            .unwrap();
        let laptop = pushed(&mem);
        assert_eq!(laptop.len(), 10);
        assert!(laptop.contains(&"dm:bob:carol#4".to_owned()));
        // A cursor never moves back.
        mem.ack(&u("bob"), "phone", "dm:alice:bob", 2)
            .await
            .unwrap();
        drain(ports(&mem), &connected("c4", "phone"), 100)
            .await
            .unwrap();
        assert_eq!(pushed(&mem).len(), 3);
        assert!(drain(ports(&mem), &connected("c5", DEFAULT_DEVICE), 100)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_groups_backlog_comes_from_the_membership_index() {
        use crate::groups::{Group, GroupStore};
        let mem = Arc::new(Memory::default());
        let g = connect_protocol::GroupId::parse("g_1").unwrap();
        mem.create(&Group {
            group: g.clone(),
            name: "t".into(),
            owner: u("alice"),
            members: vec![u("alice"), u("bob")],
        })
        .await
        .unwrap();
        let entries: Vec<_> = (1..=3)
            .map(|s| LogEntry {
                mv: 1,
                ..entry("group:g_1", s, "alice")
            })
            .collect();
        mem.append(&entries).await.unwrap();
        drain(ports(&mem), &connected("c1", "phone"), 2)
            .await
            .unwrap();
        assert_eq!(
            pushed(&mem),
            ["group:g_1#1", "group:g_1#2", "group:g_1#3", "caught_up"]
        );
    }

    #[tokio::test]
    async fn a_member_who_joined_later_gets_nothing_sequenced_before() {
        use crate::groups::{Group, GroupStore};
        let mem = Arc::new(Memory::default());
        let g = connect_protocol::GroupId::parse("g_1").unwrap();
        mem.create(&Group {
            group: g.clone(),
            name: "t".into(),
            owner: u("alice"),
            members: vec![u("alice")],
        })
        .await
        .unwrap();
        // Sequenced under version 1; bob joins at version 2; one more under version 2.
        let mut early = entry("group:g_1", 1, "alice");
        early.mv = 1;
        mem.add_member(&g, &u("bob"), &u("alice")).await.unwrap();
        let mut late = entry("group:g_1", 2, "alice");
        late.mv = 2;
        mem.append(&[early, late]).await.unwrap();
        drain(ports(&mem), &connected("c1", "phone"), 10)
            .await
            .unwrap();
        assert_eq!(pushed(&mem), ["group:g_1#2", "caught_up"]);
    }

    #[tokio::test]
    async fn a_gone_connection_stops_the_drain_and_the_next_gets_it_all() {
        let mem = Arc::new(Memory::default());
        mem.append(&[
            entry("dm:alice:bob", 1, "alice"),
            entry("dm:alice:bob", 2, "alice"),
        ])
        .await
        .unwrap();
        mem.set_gone("c1");
        let report = drain(ports(&mem), &connected("c1", "phone"), 10)
            .await
            .unwrap();
        assert_eq!(
            report,
            DrainReport {
                pushed: 0,
                gone: true
            }
        );
        let report = drain(ports(&mem), &connected("c2", "phone"), 10)
            .await
            .unwrap();
        assert_eq!(report.pushed, 2);
    }
}
