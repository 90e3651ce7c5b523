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
//!
//! The logs may be lost (they live on a Redis that evicts under memory pressure, and expire):
//! history has every message. A device's backlog in a conversation is what it has not acked,
//! at most the newest [`DrainLimits::log_max`] (what a log holds); where the log does not hold
//! it, it is read from history. A group's head is the inbox index's (durable) as well as its
//! log's, so a group whose log was evicted is still drained.
//!
//! A drain is bounded: past its deadline it stops between pages and hands back a continuation
//! (the same record with a [`Resume`] point) to publish behind everyone else's records, so one
//! user with thousands of conversations never holds up another user's catch-up for longer than
//! one slice. Conversations the device has acked to their head are skipped without reading
//! their logs. A connection that is not keeping up (its gateway answers busy, 429, instead of
//! making the drain wait for room) is handled the same way: the drain hands back a continuation
//! from the entry it could not post and goes on with the others; a connection that takes
//! nothing for [`BatchLimits::attempts`] rounds in a row is given up until its next connection.

use serde::Deserialize;

use connect_protocol::ConversationId;

use crate::groups::GroupStore;
use crate::history::Range;
use crate::model::{LogEntry, Resume, UserConnected};
use crate::ports::{
    ConnectionPusher, ConversationLog, HistoryStore, InboxIndex, PushError, SessionRegistry,
};
use crate::PortError;

/// Posted after a device's backlog: the gateway releases the live messages it held for the
/// connection (and does not forward this to the client).
pub const CAUGHT_UP: &str = r#"{"type":"caught_up"}"#;

/// What one drain did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub pushed: usize,
    /// Of them, read from history (the log did not hold them).
    pub from_history: usize,
    /// The connection went away (410) before the backlog was pushed; it waits for the next.
    pub gone: bool,
    /// The deadline came first: the record that continues the drain where it stopped.
    pub more: Option<UserConnected>,
}

/// How much one drain may do.
#[derive(Debug, Clone, Copy)]
pub struct DrainLimits {
    /// Entries per log read.
    pub page: usize,
    /// When to stop (after at least one page) and hand back a continuation.
    pub deadline: std::time::Instant,
    /// The most of a conversation's newest messages a device is handed (`OFFLINE_LOG_MAX`, what
    /// a log keeps): older ones are the client's to read from history.
    pub log_max: usize,
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
    /// Where a log falls short.
    pub history: &'a dyn HistoryStore,
    /// Groups' heads (durable).
    pub index: &'a dyn InboxIndex,
    /// Live sessions: a record is drained only to a connection its user has there.
    pub sessions: &'a dyn SessionRegistry,
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

/// Where a device's drain starts: each conversation it may have a backlog in (conversation,
/// head, since), sorted, and its cursors.
struct Plan {
    logs: Vec<(String, u64, u64)>,
    cursors: std::collections::HashMap<String, u64>,
}

/// The plans of `records`' drains (same order), read together: the devices' direct
/// conversations and cursors in one call, each user's memberships (side by side, up to
/// `concurrency`), then the heads of every group among them in one call to the log and one to
/// the index. A failed read fails the records it was for.
async fn plans(
    ports: DrainPorts<'_>,
    records: &[UserConnected],
    concurrency: usize,
) -> Vec<Result<Plan, PortError>> {
    use futures_util::stream::{self, StreamExt};
    let devices: Vec<(connect_protocol::UserId, String)> = records
        .iter()
        .map(|r| (r.user.clone(), r.device.clone()))
        .collect();
    let starts = ports.log.starts(&devices);
    let memberships = stream::iter(records)
        .map(|r| ports.groups.memberships_of(&r.user))
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>();
    let (starts, memberships) = futures_util::future::join(starts, memberships).await;
    let starts = match starts {
        Ok(starts) => starts,
        Err(e) => return records.iter().map(|_| Err(e.clone())).collect(),
    };
    let mut named: Vec<(String, ConversationId)> = memberships
        .iter()
        .flatten()
        .flatten()
        .map(|m| {
            let c = ConversationId::group(m.group.clone());
            (c.to_string(), c)
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.dedup_by(|a, b| a.0 == b.0);
    let (names, groups): (Vec<String>, Vec<ConversationId>) = named.into_iter().unzip();
    let (in_logs, indexed) =
        futures_util::future::join(ports.log.heads(&names), ports.index.heads(&groups)).await;
    let heads: std::collections::HashMap<&str, u64> = match (in_logs, indexed) {
        (Ok(in_logs), Ok(indexed)) => names
            .iter()
            .zip(in_logs.into_iter().zip(indexed))
            .map(|(name, (logged, indexed))| {
                (name.as_str(), logged.max(indexed.map_or(0, |h| h.seq)))
            })
            .collect(),
        (Err(e), _) | (_, Err(e)) => return records.iter().map(|_| Err(e.clone())).collect(),
    };
    starts
        .into_iter()
        .zip(memberships)
        .map(|(start, memberships)| {
            let mut logs: Vec<(String, u64, u64)> = start
                .inbox
                .into_iter()
                .map(|(conversation, head)| (conversation, head, 0))
                .collect();
            for m in memberships? {
                let conversation = ConversationId::group(m.group).to_string();
                let head = heads.get(conversation.as_str()).copied().unwrap_or(0);
                logs.push((conversation, head, m.since));
            }
            logs.sort();
            Ok(Plan {
                logs,
                cursors: start.cursors,
            })
        })
        .collect()
}

/// Pushes the backlog of `event`'s device to `event.conn` (from its resume point, if any), then
/// [`CAUGHT_UP`]; or, at the deadline, stops and hands back the continuation. `Err` means a
/// backend failed: the drain should be tried again (pushing again is harmless).
pub async fn drain(
    ports: DrainPorts<'_>,
    event: &UserConnected,
    limits: DrainLimits,
) -> Result<DrainReport, PortError> {
    let plan = plans(ports, std::slice::from_ref(event), 1)
        .await
        .pop()
        .expect("one plan per record")?;
    drain_from(ports, event, plan, limits).await
}

/// [`drain`] from its plan.
async fn drain_from(
    ports: DrainPorts<'_>,
    event: &UserConnected,
    plan: Plan,
    limits: DrainLimits,
) -> Result<DrainReport, PortError> {
    let page = limits.page.max(1);
    let mut report = DrainReport::default();
    let Plan { mut logs, cursors } = plan;
    if let Some(resume) = &event.resume {
        logs.retain(|(conversation, _, _)| *conversation >= resume.conversation);
    }
    let mut pages = 0usize;
    // Where the drain stands: the conversation it is in and the last seq handed over.
    let mut at: Option<Resume> = None;
    for (conversation, head, since) in logs {
        let mut after = cursors
            .get(&conversation)
            .copied()
            .unwrap_or(0)
            .max(head.saturating_sub(limits.log_max as u64));
        if let Some(resume) = event
            .resume
            .as_ref()
            .filter(|r| r.conversation == conversation)
        {
            after = after.max(resume.after);
        }
        at = Some(Resume {
            conversation: conversation.clone(),
            after: after.max(head),
        });
        if after >= head {
            continue;
        }
        let Ok(id) = ConversationId::parse(&conversation) else {
            continue;
        };
        while after < head {
            if pages > 0 && std::time::Instant::now() >= limits.deadline {
                report.more = Some(continuation(event, &conversation, after, true));
                return Ok(report);
            }
            pages += 1;
            let (entries, from_history) = backlog_page(ports, &id, after, head, page).await?;
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                if !for_device(&entry, event, since) {
                    after = entry.seq;
                    continue;
                }
                match ports
                    .pusher
                    .post(&event.endpoint, &event.conn, &entry.frame)
                    .await
                {
                    Ok(()) => {
                        report.pushed += 1;
                        report.from_history += usize::from(from_history);
                    }
                    Err(PushError::Gone) => {
                        report.gone = true;
                        return Ok(report);
                    }
                    Err(PushError::Busy) => {
                        let moved = report.pushed > 0;
                        report.more = Some(continuation(event, &conversation, after, moved));
                        return Ok(report);
                    }
                    Err(PushError::Failed(e)) => return Err(e),
                }
                after = entry.seq;
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
        // Everything else was handed over: the continuation only posts `caught_up`.
        Err(PushError::Busy) => {
            let moved = report.pushed > 0;
            report.more = Some(match at {
                Some(at) => continuation(event, &at.conversation, at.after, moved),
                None => continuation(event, "", 0, moved),
            });
        }
        Err(PushError::Failed(e)) => return Err(e),
    }
    Ok(report)
}

/// Up to `page` entries of `conversation` after `after` (up to `head`): from its log, or, where
/// the log does not hold `after + 1` (evicted, expired, trimmed), from history up to the log's
/// first entry (then true). Empty: nothing more above `after`.
async fn backlog_page(
    ports: DrainPorts<'_>,
    conversation: &ConversationId,
    after: u64,
    head: u64,
    page: usize,
) -> Result<(Vec<LogEntry>, bool), PortError> {
    let logged = ports.log.page(conversation, after, page).await?;
    if logged.first().is_some_and(|e| e.seq == after + 1) {
        return Ok((logged, false));
    }
    let before = logged.first().map_or(head + 1, |e| e.seq);
    let found = ports
        .history
        .page(
            conversation,
            Range::After {
                after,
                before: Some(before),
            },
            page.min(u32::MAX as usize) as u32,
        )
        .await?;
    if found.messages.is_empty() {
        // A seq no message has (an allocation lost in a crash): the log goes on after it.
        return Ok((logged, false));
    }
    Ok((found.messages.iter().map(LogEntry::of).collect(), true))
}

/// The record that resumes `event`'s drain after `after` in `conversation`. A drain that moved
/// (pushed something, or stopped at its deadline) starts its attempts afresh; one that a busy
/// connection stopped before it pushed anything uses up one attempt, so a connection that never
/// reads is given up (its device gets the backlog on its next connection).
fn continuation(
    event: &UserConnected,
    conversation: &str,
    after: u64,
    moved: bool,
) -> UserConnected {
    let mut more = event.clone();
    more.resume = Some(Resume {
        conversation: conversation.to_owned(),
        after,
    });
    more.attempt = if moved {
        0
    } else {
        event.attempt.saturating_add(1)
    };
    more
}

/// What one batch of `user_connected` records did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub pushed: usize,
    /// Of them, read from history.
    pub from_history: usize,
    pub gone: usize,
    /// Records to publish to `user_connected` again, behind everyone else's: continuations of
    /// drains that ran out of time, and drains that failed (one attempt more).
    pub again: Vec<UserConnected>,
    /// Records given up after [`BatchLimits::attempts`] failed drains (the device gets its
    /// backlog on its next connection; the gateway's catch-up timeout releases its live
    /// messages).
    pub dropped: usize,
    /// Records that named no live session of their user (a connection already closed, or a
    /// record someone other than its gateway wrote): nothing was pushed for them.
    pub refused: usize,
}

/// How a batch of records is drained.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Entries per log read.
    pub page: usize,
    /// The time every drain of the batch shares (they run side by side).
    pub budget: std::time::Duration,
    /// Drains at once.
    pub concurrency: usize,
    /// Failed drains of one connection before its record is dropped.
    pub attempts: u8,
    /// See [`DrainLimits::log_max`].
    pub log_max: usize,
}

/// Drains a batch's records side by side, each until the batch's deadline: none waits for
/// another, and none fails the batch (a failed drain is handed back to publish again, up to
/// `attempts`), so one user's backlog, or one broken record, never holds up the others.
pub async fn drain_batch(
    ports: DrainPorts<'_>,
    records: Vec<UserConnected>,
    limits: BatchLimits,
) -> BatchReport {
    use futures_util::stream::{self, StreamExt};
    let mut batch = BatchReport::default();
    let records = match registered(ports.sessions, records).await {
        Ok((live, refused)) => {
            batch.refused = refused;
            live
        }
        Err((records, e)) => {
            // Nothing is pushed where it cannot be checked: each record goes round again, as
            // a failed drain does.
            for record in records {
                batch.fail(record, &e, limits.attempts);
            }
            return batch;
        }
    };
    let drain_limits = DrainLimits {
        page: limits.page,
        deadline: std::time::Instant::now() + limits.budget,
        log_max: limits.log_max,
    };
    let plans = plans(ports, &records, limits.concurrency).await;
    let outcomes: Vec<(UserConnected, Result<DrainReport, PortError>)> =
        stream::iter(records.into_iter().zip(plans))
            .map(|(record, plan)| async move {
                let result = match plan {
                    Ok(plan) => drain_from(ports, &record, plan, drain_limits).await,
                    Err(e) => Err(e),
                };
                (record, result)
            })
            .buffer_unordered(limits.concurrency.max(1))
            .collect()
            .await;
    for (record, result) in outcomes {
        match result {
            Ok(report) => {
                batch.pushed += report.pushed;
                batch.from_history += report.from_history;
                batch.gone += usize::from(report.gone);
                match report.more {
                    Some(more) if more.attempt >= limits.attempts => {
                        tracing::warn!(user = %more.user, conn = %more.conn, "connection not reading its backlog; given up until its next connection");
                        batch.dropped += 1;
                    }
                    more => batch.again.extend(more),
                }
            }
            Err(e) => batch.fail(record, &e, limits.attempts),
        }
    }
    batch
}

impl BatchReport {
    /// A record whose drain failed: round again while attempts are left and the failure may
    /// pass, else given up.
    fn fail(&mut self, record: UserConnected, e: &PortError, attempts: u8) {
        if record.attempt + 1 < attempts && e.is_retryable() {
            tracing::warn!(cause = %e, user = %record.user, conn = %record.conn, attempt = record.attempt, "drain failed; it goes round again");
            let mut again = record;
            again.attempt += 1;
            self.again.push(again);
        } else {
            tracing::error!(cause = %e, user = %record.user, conn = %record.conn, "drain failed for good; the device gets its backlog on its next connection");
            self.dropped += 1;
        }
    }
}

/// The records that name a live session of their user: the same connection, on the same
/// gateway and endpoint, for the same device (one registry lookup for the batch). Any service
/// that may write to `user_connected` could otherwise have a user's backlog pushed to an
/// endpoint of its choosing; and a connection that closed gets nothing. Returns them and how
/// many were refused; on a registry failure, every record and the failure.
async fn registered(
    sessions: &dyn SessionRegistry,
    records: Vec<UserConnected>,
) -> Result<(Vec<UserConnected>, usize), (Vec<UserConnected>, PortError)> {
    if records.is_empty() {
        return Ok((records, 0));
    }
    let mut users: Vec<connect_protocol::UserId> = records.iter().map(|r| r.user.clone()).collect();
    users.sort();
    users.dedup();
    let routes = match sessions.lookup(&users).await {
        Ok(routes) => routes,
        Err(e) => return Err((records, e)),
    };
    let (live, refused): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
        let Ok(i) = users.binary_search(&r.user) else {
            return false;
        };
        routes[i].iter().any(|s| {
            s.conn == r.conn
                && s.gateway == r.gateway
                && s.endpoint == r.endpoint
                && s.device.as_deref().unwrap_or(crate::model::DEFAULT_DEVICE) == r.device
        })
    });
    for r in &refused {
        tracing::warn!(user = %r.user, conn = %r.conn, gateway = %r.gateway, "user_connected names no live session of its user; nothing pushed");
    }
    Ok((live, refused.len()))
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
            resume: None,
            attempt: 0,
        }
    }

    /// A batch's bounds: four drains at once, logs unbounded.
    fn batch_limits(page: usize, budget: std::time::Duration, attempts: u8) -> BatchLimits {
        BatchLimits {
            log_max: usize::MAX,
            page,
            budget,
            concurrency: 4,
            attempts,
        }
    }

    fn unbounded(page: usize) -> DrainLimits {
        DrainLimits {
            page,
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(3600),
            log_max: usize::MAX,
        }
    }

    fn ports(mem: &Memory) -> DrainPorts<'_> {
        DrainPorts {
            log: mem,
            groups: mem,
            pusher: mem,
            history: mem,
            index: mem,
            sessions: mem,
        }
    }

    /// Registers each record's connection as its gateway does before it publishes the record.
    async fn live(mem: &Memory, records: &[&UserConnected]) {
        let sessions: Vec<crate::model::Session> = records
            .iter()
            .map(|r| crate::model::Session {
                user: r.user.clone(),
                route: crate::model::SessionRoute {
                    conn: r.conn.clone(),
                    slot: 0,
                    gateway: r.gateway.clone(),
                    endpoint: r.endpoint.clone(),
                    device: Some(r.device.clone()),
                },
            })
            .collect();
        SessionRegistry::upsert(mem, &sessions).await.unwrap();
    }

    /// (conversation, seq) of what was pushed, markers as "caught_up".
    fn pushed(mem: &Memory) -> Vec<String> {
        mem.take_pushed().iter().map(|(_, d)| named(d)).collect()
    }

    fn named(data: &str) -> String {
        let f: serde_json::Value = serde_json::from_str(data).unwrap();
        match f["type"].as_str() {
            Some("caught_up") => "caught_up".to_owned(),
            _ => format!("{}#{}", f["conversation"].as_str().unwrap(), f["seq"]),
        }
    }

    /// What was pushed to `conn` so far (kept).
    fn pushed_to(mem: &Memory, conn: &str) -> Vec<String> {
        mem.pushed
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| c == conn)
            .map(|(_, d)| named(d))
            .collect()
    }

    fn stored(conv: &str, seq: u64, from: &str) -> crate::model::StoredMessage {
        crate::model::StoredMessage {
            conversation: ConversationId::parse(conv).unwrap(),
            seq,
            from: u(from),
            id: connect_protocol::ClientMsgId::parse(format!("m{seq}")).unwrap(),
            body: format!("b{seq}"),
            ts: seq,
            event: None,
            mv: None,
            device: Some("phone".into()),
        }
    }

    /// `n` messages of `conv` in history and in its log, as messaging writes them.
    async fn sent(mem: &Memory, conv: &str, n: u64, from: &str) {
        use crate::ports::ChatStore;
        let messages: Vec<_> = (1..=n).map(|s| stored(conv, s, from)).collect();
        mem.put_batch(&messages).await.unwrap();
        let entries: Vec<LogEntry> = messages.iter().map(LogEntry::of).collect();
        mem.append(&entries).await.unwrap();
        let id = ConversationId::parse(conv).unwrap();
        let write = crate::ports::InboxWrite {
            heads: vec![(id, crate::ports::Head { seq: n, ts: n })],
            ..Default::default()
        };
        mem.write(&write).await.unwrap();
    }

    /// A log lost (evicted under memory pressure, or expired) keeps its index entry: history
    /// has every message, and the drain reads it in its place.
    fn evict(mem: &Memory, conv: &str) {
        mem.logs.lock().unwrap().remove(conv);
    }

    #[tokio::test]
    async fn where_a_log_was_lost_or_falls_short_the_backlog_comes_from_history() {
        let mem = Arc::new(Memory::default());
        sent(&mem, "dm:alice:bob", 6, "alice").await;
        mem.put_group("g_trip", "Trip", "alice", &["alice", "bob"]);
        sent(&mem, "group:g_trip", 4, "alice").await;
        mem.ack(&u("bob"), "laptop", "dm:alice:bob", 2)
            .await
            .unwrap();
        // Both logs evicted: every message bob's laptop has not acked, from history, in order.
        evict(&mem, "dm:alice:bob");
        evict(&mem, "group:g_trip");
        let report = drain(ports(&mem), &connected("c1", "laptop"), unbounded(2))
            .await
            .unwrap();
        assert_eq!((report.pushed, report.from_history), (8, 8));
        // The frames are the log's: history renders the same `message` frame.
        let frame = mem.pushed.lock().unwrap()[0].1.clone();
        assert_eq!(frame, stored("dm:alice:bob", 3, "alice").frame_text());
        let mut want: Vec<String> = (3..=6).map(|s| format!("dm:alice:bob#{s}")).collect();
        want.extend((1..=4).map(|s| format!("group:g_trip#{s}")));
        want.push("caught_up".into());
        assert_eq!(pushed(&mem), want);

        // A log trimmed in the middle (it holds 5..6 only): 3..4 from history, the rest from it.
        let mem = Arc::new(Memory::default());
        sent(&mem, "dm:alice:bob", 6, "alice").await;
        mem.logs
            .lock()
            .unwrap()
            .get_mut("dm:alice:bob")
            .unwrap()
            .retain(|seq, _| *seq >= 5);
        mem.ack(&u("bob"), "laptop", "dm:alice:bob", 2)
            .await
            .unwrap();
        let report = drain(ports(&mem), &connected("c1", "laptop"), unbounded(10))
            .await
            .unwrap();
        assert_eq!((report.pushed, report.from_history), (4, 2));
        assert_eq!(
            pushed(&mem),
            [
                "dm:alice:bob#3",
                "dm:alice:bob#4",
                "dm:alice:bob#5",
                "dm:alice:bob#6",
                "caught_up"
            ]
        );
    }

    #[tokio::test]
    async fn a_device_is_handed_at_most_the_newest_log_max_of_a_conversation() {
        let mem = Arc::new(Memory::default());
        sent(&mem, "dm:alice:bob", 10, "alice").await;
        evict(&mem, "dm:alice:bob");
        let limits = DrainLimits {
            log_max: 3,
            ..unbounded(2)
        };
        let report = drain(ports(&mem), &connected("c1", "laptop"), limits)
            .await
            .unwrap();
        assert_eq!(report.pushed, 3);
        assert_eq!(
            pushed(&mem),
            [
                "dm:alice:bob#8",
                "dm:alice:bob#9",
                "dm:alice:bob#10",
                "caught_up"
            ]
        );
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

        let report = drain(ports(&mem), &connected("c1", "phone"), unbounded(3))
            .await
            .unwrap();
        assert_eq!(
            report,
            DrainReport {
                pushed: 8,
                from_history: 0,
                gone: false,
                more: None,
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
        drain(ports(&mem), &connected("c2", "phone"), unbounded(100))
            .await
            .unwrap();
        assert_eq!(
            pushed(&mem),
            ["dm:alice:bob#6", "dm:alice:bob#7", "caught_up"]
        );
        drain(ports(&mem), &connected("c3", "laptop"), unbounded(100))
            .await
            .unwrap();
        let laptop = pushed(&mem);
        assert_eq!(laptop.len(), 10);
        assert!(laptop.contains(&"dm:bob:carol#4".to_owned()));
        // A cursor never moves back.
        mem.ack(&u("bob"), "phone", "dm:alice:bob", 2)
            .await
            .unwrap();
        drain(ports(&mem), &connected("c4", "phone"), unbounded(100))
            .await
            .unwrap();
        assert_eq!(pushed(&mem).len(), 3);
        assert!(drain(
            ports(&mem),
            &connected("c5", DEFAULT_DEVICE),
            unbounded(100)
        )
        .await
        .is_ok());
    }

    #[tokio::test]
    async fn a_groups_backlog_comes_from_the_membership_index() {
        let mem = Arc::new(Memory::default());
        mem.put_group("g_1", "t", "alice", &["alice", "bob"]);
        let entries: Vec<_> = (1..=3)
            .map(|s| LogEntry {
                mv: 1,
                ..entry("group:g_1", s, "alice")
            })
            .collect();
        mem.append(&entries).await.unwrap();
        drain(ports(&mem), &connected("c1", "phone"), unbounded(2))
            .await
            .unwrap();
        assert_eq!(
            pushed(&mem),
            ["group:g_1#1", "group:g_1#2", "group:g_1#3", "caught_up"]
        );
    }

    #[tokio::test]
    async fn a_member_who_joined_later_gets_nothing_sequenced_before() {
        use crate::groups::GroupStore;
        let mem = Arc::new(Memory::default());
        let g = mem.put_group("g_1", "t", "alice", &["alice"]);
        // Sequenced under version 1; bob joins at version 2; one more under version 2.
        let mut early = entry("group:g_1", 1, "alice");
        early.mv = 1;
        mem.add_member(&g, &u("bob"), &u("alice"), crate::groups::Caps::UNBOUNDED)
            .await
            .unwrap();
        let mut late = entry("group:g_1", 2, "alice");
        late.mv = 2;
        mem.append(&[early, late]).await.unwrap();
        drain(ports(&mem), &connected("c1", "phone"), unbounded(10))
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
        let report = drain(ports(&mem), &connected("c1", "phone"), unbounded(10))
            .await
            .unwrap();
        assert_eq!(
            report,
            DrainReport {
                pushed: 0,
                from_history: 0,
                gone: true,
                more: None,
            }
        );
        let report = drain(ports(&mem), &connected("c2", "phone"), unbounded(10))
            .await
            .unwrap();
        assert_eq!(report.pushed, 2);
    }

    #[tokio::test]
    async fn past_its_deadline_a_drain_hands_back_a_continuation_that_resumes_where_it_stopped() {
        let mem = Arc::new(Memory::default());
        let mut entries: Vec<_> = (1..=5).map(|s| entry("dm:alice:bob", s, "alice")).collect();
        entries.extend((1..=3).map(|s| entry("dm:bob:carol", s, "carol")));
        entries.push(entry("dm:bob:dave", 1, "dave"));
        mem.append(&entries).await.unwrap();
        // dave's conversation is acked to its head: skipped without a read.
        mem.ack(&u("bob"), "phone", "dm:bob:dave", 1).await.unwrap();
        let expired = DrainLimits {
            page: 2,
            deadline: std::time::Instant::now(),
            log_max: usize::MAX,
        };
        let mut record = connected("c1", "phone");
        let mut slices = 0;
        let mut all = Vec::new();
        loop {
            slices += 1;
            let report = drain(ports(&mem), &record, expired).await.unwrap();
            all.extend(pushed(&mem));
            match report.more {
                Some(more) => {
                    assert_eq!(more.conn, "c1");
                    assert!(more.resume.is_some());
                    record = more;
                }
                None => break,
            }
        }
        // One page (2 entries) per slice: 3 pages of alice's, 2 of carol's.
        assert_eq!(slices, 5);
        let mut want: Vec<String> = (1..=5).map(|s| format!("dm:alice:bob#{s}")).collect();
        want.extend((1..=3).map(|s| format!("dm:bob:carol#{s}")));
        want.push("caught_up".into());
        assert_eq!(
            all, want,
            "each entry once, in order, caught_up only at the very end"
        );
        // The record survives its trip through the topic.
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<UserConnected>(&json).unwrap(),
            record
        );
    }

    #[tokio::test]
    async fn a_record_that_names_no_live_session_of_its_user_gets_nothing() {
        let mem = Arc::new(Memory::default());
        mem.append(&[entry("dm:alice:bob", 1, "alice")])
            .await
            .unwrap();
        let limits = batch_limits(10, std::time::Duration::from_secs(60), 2);
        let real = connected("c1", "phone");
        live(&mem, &[&real]).await;
        // Written by someone else than bob's gateway: bob's connection id, another endpoint; a
        // connection bob does not have; bob's connection, another device.
        let elsewhere = UserConnected {
            endpoint: "http://attacker".into(),
            ..real.clone()
        };
        let report = drain_batch(
            ports(&mem),
            vec![
                elsewhere,
                connected("c2", "phone"),
                connected("c1", "laptop"),
            ],
            limits,
        )
        .await;
        assert_eq!(
            (report.pushed, report.refused, report.again.len()),
            (0, 3, 0)
        );
        assert!(pushed(&mem).is_empty());
        // The registry cannot be read: nothing pushed, the record goes round again.
        mem.lookup_failures
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let report = drain_batch(ports(&mem), vec![real.clone()], limits).await;
        assert_eq!(
            (report.pushed, report.again.len(), report.again[0].attempt),
            (0, 1, 1)
        );
        // The real record is drained.
        let report = drain_batch(ports(&mem), vec![real], limits).await;
        assert_eq!((report.pushed, report.refused), (1, 0));
        assert_eq!(pushed(&mem), ["dm:alice:bob#1", "caught_up"]);
        // The connection closed: its record (a late continuation) is refused.
        SessionRegistry::remove(&*mem, &[(u("bob"), "c1".into())])
            .await
            .unwrap();
        let report = drain_batch(ports(&mem), vec![connected("c1", "phone")], limits).await;
        assert_eq!((report.pushed, report.refused), (0, 1));
    }

    #[tokio::test]
    async fn a_batch_drains_side_by_side_and_a_failed_drain_goes_round_again_until_dropped() {
        let mem = Arc::new(Memory::default());
        let mut entries: Vec<_> = (1..=6).map(|s| entry("dm:alice:bob", s, "alice")).collect();
        entries.push(entry("dm:carol:erin", 1, "carol"));
        mem.append(&entries).await.unwrap();
        let mut erin = connected("e1", "phone");
        erin.user = u("erin");
        live(&mem, &[&connected("c1", "phone"), &erin]).await;
        let limits = batch_limits(2, std::time::Duration::ZERO, 2);
        let report = drain_batch(
            ports(&mem),
            vec![connected("c1", "phone"), erin.clone()],
            limits,
        )
        .await;
        // bob's drain stops after a page; erin's whole backlog fits in its first page.
        assert_eq!((report.pushed, report.dropped), (3, 0));
        assert_eq!(report.again.len(), 1);
        assert_eq!(report.again[0].conn, "c1");
        let pushed: Vec<String> = pushed(&mem);
        assert!(pushed.contains(&"dm:carol:erin#1".to_owned()), "{pushed:?}");
        // A drain whose reads fail goes round again once, then is dropped.
        mem.inbox_failures
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let report = drain_batch(ports(&mem), vec![erin.clone()], limits).await;
        assert_eq!((report.again.len(), report.again[0].attempt), (1, 1));
        mem.inbox_failures
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let report = drain_batch(ports(&mem), report.again, limits).await;
        assert_eq!((report.again.len(), report.dropped), (0, 1));
    }

    #[tokio::test]
    async fn a_busy_connection_gets_a_continuation_and_a_reader_that_takes_nothing_is_given_up() {
        let mem = Arc::new(Memory::default());
        let entries: Vec<_> = (1..=5).map(|s| entry("dm:alice:bob", s, "alice")).collect();
        mem.append(&entries).await.unwrap();
        mem.append(&[entry("dm:carol:erin", 1, "carol")])
            .await
            .unwrap();
        let limits = batch_limits(10, std::time::Duration::from_secs(60), 3);
        // bob's connection takes two posts, then is busy; erin's drain is not held up by it.
        mem.set_room("c1", 2);
        let erin = UserConnected {
            user: u("erin"),
            ..connected("c9", "laptop")
        };
        live(
            &mem,
            &[&connected("c1", "phone"), &erin, &connected("c2", "phone")],
        )
        .await;
        let report = drain_batch(ports(&mem), vec![connected("c1", "phone"), erin], limits).await;
        assert_eq!((report.pushed, report.dropped), (3, 0));
        assert_eq!(report.again.len(), 1);
        let more = report.again[0].clone();
        assert_eq!(more.conn, "c1");
        assert_eq!(more.attempt, 0, "it moved: its attempts start afresh");
        assert_eq!(
            more.resume
                .as_ref()
                .map(|r| (r.conversation.as_str(), r.after)),
            Some(("dm:alice:bob", 2)),
            "it resumes at the entry that could not be posted"
        );
        // It takes nothing now: each round uses up an attempt, until it is given up.
        let mut record = more;
        for attempt in 1..3 {
            let report = drain_batch(ports(&mem), vec![record.clone()], limits).await;
            assert_eq!((report.pushed, report.again.len()), (0, 1));
            record = report.again[0].clone();
            assert_eq!(record.attempt, attempt);
        }
        let report = drain_batch(ports(&mem), vec![record.clone()], limits).await;
        assert_eq!((report.again.len(), report.dropped), (0, 1));
        // Room again (it was read): the continuation finishes, every entry once, then caught_up.
        mem.set_room("c1", 10);
        let report = drain_batch(ports(&mem), vec![record], limits).await;
        assert_eq!((report.pushed, report.again.len()), (3, 0));
        let bob: Vec<String> = pushed_to(&mem, "c1");
        let mut want: Vec<String> = (1..=5).map(|s| format!("dm:alice:bob#{s}")).collect();
        want.push("caught_up".into());
        assert_eq!(bob, want);
        // Busy for `caught_up` alone: the continuation posts only that.
        mem.set_room("c2", 5);
        let report = drain(ports(&mem), &connected("c2", "phone"), unbounded(10))
            .await
            .unwrap();
        let more = report.more.expect("a continuation for caught_up");
        mem.set_room("c2", 1);
        let report = drain(ports(&mem), &more, unbounded(10)).await.unwrap();
        assert_eq!((report.pushed, report.more), (0, None));
        assert_eq!(pushed_to(&mem, "c2").last().unwrap(), "caught_up");
        assert_eq!(pushed_to(&mem, "c2").len(), 6);
    }
}
