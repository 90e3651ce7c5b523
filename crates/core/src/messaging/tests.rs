use std::collections::HashMap;
use std::sync::Arc;

use connect_protocol::{ClientMsgId, ConversationId, UserId};

use super::*;
use crate::memory::Memory;
use crate::model::{Acceptance, Session, SessionRoute, StoredMessage, Submission};
use crate::ports::{DedupeIndex, SessionRegistry};

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn send(from: &str, to: &str, id: &str, conn: &str, slot: u32) -> Submission {
    Submission {
        conversation: ConversationId::direct(&user(from), &user(to)).unwrap(),
        sender: user(from),
        id: ClientMsgId::parse(id).unwrap(),
        body: format!("body of {id}"),
        reply: Some(ReplyTo {
            conn: conn.into(),
            slot,
            region: None,
        }),
        event: None,
        submitted_ms: 0,
        device: None,
        hops: 0,
    }
}

async fn online(mem: &Memory, who: &str, conn: &str, slot: u32) {
    let route = SessionRoute {
        conn: conn.into(),
        slot,
        gateway: format!("gw{slot}"),
        endpoint: String::new(),
        device: None,
    };
    mem.upsert(&[Session {
        user: user(who),
        route,
    }])
    .await
    .unwrap();
}

fn frame(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn one_record_per_gateway_with_the_accepted_on_the_senders() {
    let mem = Arc::new(Memory::default());
    online(&mem, "alice", "a1", 0).await;
    online(&mem, "alice", "a2", 1).await;
    online(&mem, "bob", "b1", 0).await;
    online(&mem, "bob", "b2", 1).await;
    let step = MessagingStep::new(mem.ports());
    let report = step
        .process(vec![send("alice", "bob", "m1", "a1", 0)], 1000)
        .await
        .unwrap();
    assert_eq!(report.stored, 1);
    let mut out = mem.take_published();
    out.sort_by_key(|d| d.slot);
    assert_eq!(out.len(), 2, "{out:?}");
    for d in &out {
        assert_eq!(d.recipients, vec![user("alice"), user("bob")]);
        let m = frame(&d.message.as_ref().unwrap().frame);
        assert_eq!(
            (m["seq"].as_u64(), m["from"].as_str(), m["ts"].as_u64()),
            (Some(1), Some("alice"), Some(1000))
        );
    }
    let reply = out[0].reply.as_ref().unwrap();
    assert_eq!(reply.conn, "a1");
    assert_eq!(frame(&reply.frame)["type"], "accepted");
    assert!(out[1].reply.is_none());
}

#[tokio::test]
async fn seqs_follow_batch_order_per_conversation() {
    let mem = Arc::new(Memory::default());
    let step = MessagingStep::new(mem.ports());
    let batch = vec![
        send("alice", "bob", "m1", "a1", 0),
        send("carol", "dave", "x1", "c1", 2),
        send("bob", "alice", "m2", "b1", 1),
        send("alice", "bob", "m3", "a1", 0),
    ];
    step.process(batch, 5).await.unwrap();
    let seqs: Vec<_> = mem
        .stored()
        .iter()
        .map(|m| (m.conversation.to_string(), m.seq, m.id.to_string()))
        .collect();
    assert_eq!(
        seqs,
        vec![
            ("dm:alice:bob".into(), 1, "m1".into()),
            ("dm:alice:bob".into(), 2, "m2".into()),
            ("dm:alice:bob".into(), 3, "m3".into()),
            ("dm:carol:dave".into(), 1, "x1".into()),
        ]
    );
    // Nobody is online: only the three senders' replies go out, to their own slots.
    let out = mem.take_published();
    assert_eq!(out.len(), 4);
    assert!(out.iter().all(|d| d.message.is_none() && d.reply.is_some()));
}

#[tokio::test]
async fn a_retried_id_keeps_its_seq_in_the_same_and_in_a_later_batch() {
    let mem = Arc::new(Memory::default());
    let step = MessagingStep::new(mem.ports());
    let report = step
        .process(
            vec![
                send("alice", "bob", "m1", "a1", 0),
                send("alice", "bob", "m1", "a2", 1),
            ],
            7,
        )
        .await
        .unwrap();
    assert_eq!((report.stored, report.duplicates), (1, 1));
    step.process(
        vec![
            send("alice", "bob", "m1", "a3", 0),
            send("alice", "bob", "m2", "a3", 0),
        ],
        9,
    )
    .await
    .unwrap();
    let stored = mem.stored();
    assert_eq!(
        stored
            .iter()
            .map(|m| (m.id.to_string(), m.seq))
            .collect::<Vec<_>>(),
        vec![("m1".into(), 1), ("m2".into(), 2)]
    );
    let replies: Vec<_> = mem
        .take_published()
        .into_iter()
        .filter_map(|d| d.reply)
        .map(|r| frame(&r.frame))
        .collect();
    let m1: Vec<_> = replies
        .iter()
        .filter(|f| f["id"] == "m1")
        .map(|f| (f["seq"].as_u64(), f["ts"].as_u64()))
        .collect();
    assert_eq!(m1, vec![(Some(1), Some(7)); 3]);
}

/// Remembers `sub` as accepted at (`seq`, `ts`) in its own conversation, as a process that
/// stopped before writing it leaves it.
async fn remember_at(mem: &Memory, sub: &Submission, seq: u64, ts: u64) {
    let acceptance = Acceptance {
        conversation: sub.conversation.clone(),
        seq,
        ts,
        mv: None,
    };
    mem.remember(&[(sub.dedupe_key(), acceptance)])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replay_after_a_crash_between_remember_and_write_stores_the_original_seq() {
    let mem = Arc::new(Memory::default());
    let step = MessagingStep::new(mem.ports());
    let sub = send("alice", "bob", "m1", "a1", 0);
    // What a crash leaves: the acceptance remembered (seq 4), the message not written.
    remember_at(&mem, &sub, 4, 3).await;
    step.process(vec![sub], 10).await.unwrap();
    let stored = mem.stored();
    assert_eq!((stored.len(), stored[0].seq, stored[0].ts), (1, 4, 3));
}

/// A dedupe index where another process remembers every looked-up send right after the lookup
/// (two owners of a partition for a moment, around a rebalance, both taking the same record).
struct Rival {
    mem: Arc<Memory>,
    seq: u64,
}

#[async_trait::async_trait]
impl DedupeIndex for Rival {
    async fn get(
        &self,
        keys: &[crate::model::DedupeKey],
    ) -> Result<Vec<Option<Acceptance>>, PortError> {
        let found = self.mem.get(keys).await?;
        let conversation = ConversationId::direct(&user("alice"), &user("bob")).unwrap();
        let rival: Vec<_> = keys
            .iter()
            .map(|k| {
                let acceptance = Acceptance {
                    conversation: conversation.clone(),
                    seq: self.seq,
                    ts: 77,
                    mv: None,
                };
                (k.clone(), acceptance)
            })
            .collect();
        self.mem.remember(&rival).await?;
        Ok(found)
    }

    async fn remember(
        &self,
        entries: &[(crate::model::DedupeKey, Acceptance)],
    ) -> Result<Vec<Option<Acceptance>>, PortError> {
        self.mem.remember(entries).await
    }

    async fn forget(
        &self,
        entries: &[(crate::model::DedupeKey, Acceptance)],
    ) -> Result<(), PortError> {
        self.mem.forget(entries).await
    }
}

#[tokio::test]
async fn a_send_remembered_first_by_another_process_keeps_that_seq_and_is_stored_once() {
    let mem = Arc::new(Memory::default());
    online(&mem, "bob", "b1", 1).await;
    let mut ports = mem.ports();
    ports.dedupe = Arc::new(Rival {
        mem: mem.clone(),
        seq: 40,
    });
    let step = MessagingStep::new(ports);
    let report = step
        .process(
            vec![
                send("alice", "bob", "m1", "a1", 0),
                send("alice", "bob", "m1", "a2", 0),
            ],
            1,
        )
        .await
        .unwrap();
    assert_eq!((report.stored, report.duplicates), (0, 2), "{report:?}");
    // One copy, under the first acceptance (written from this send, as the rival had not yet).
    let stored: Vec<_> = mem
        .stored()
        .iter()
        .map(|m| (m.seq, m.ts, m.id.to_string()))
        .collect();
    assert_eq!(stored, vec![(40, 77, "m1".to_owned())]);
    let answers: Vec<_> = accepted_frames(&mem)
        .iter()
        .map(|f| f["seq"].as_u64())
        .collect();
    assert_eq!(
        answers,
        vec![Some(40), Some(40)],
        "both copies answer the first acceptance"
    );
}

#[tokio::test]
async fn a_store_failure_answers_unavailable_and_the_retry_gets_the_original_seq() {
    let mem = Arc::new(Memory::default());
    let step = MessagingStep::new(mem.ports());
    mem.set_chat_down(true);
    let report = step
        .process(vec![send("alice", "bob", "m1", "a1", 0)], 1)
        .await
        .unwrap();
    assert_eq!((report.stored, report.unavailable), (0, 1));
    let out = mem.take_published();
    let err = frame(&out[0].reply.as_ref().unwrap().frame);
    assert_eq!(
        (
            err["type"].as_str(),
            err["code"].as_str(),
            err["id"].as_str()
        ),
        (Some("error"), Some("unavailable"), Some("m1"))
    );
    assert!(mem.stored().is_empty());
    mem.set_chat_down(false);
    step.process(vec![send("alice", "bob", "m1", "a1", 0)], 2)
        .await
        .unwrap();
    let stored = mem.stored();
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1],
        "the retry with the same id is stored once, under the seq its first try was given"
    );
    let accepted = accepted_frames(&mem);
    assert_eq!(accepted[0]["seq"], 1);
}

/// A conversation whose seqs 4..=8 were given back while seq 4 holds a message: a state the
/// allocator should never reach (a give-back only returns seqs nobody was handed), made here
/// to prove the chat table's guard. Returns the conversation and the message at seq 4.
async fn given_back_over_a_stored_message(mem: &Memory) -> (ConversationId, StoredMessage) {
    use crate::ports::{ChatStore, SequenceAllocator};
    let sub = send("alice", "bob", "old", "a0", 0);
    let c = sub.conversation.clone();
    assert_eq!(
        mem.allocate(&[(c.clone(), 8)]).await[0]
            .clone()
            .unwrap()
            .first,
        1
    );
    assert!(mem.give_back(&c, 4, 8).await.unwrap());
    let old = StoredMessage {
        conversation: c.clone(),
        seq: 4,
        from: user("alice"),
        id: ClientMsgId::parse("old").unwrap(),
        body: "stored before".into(),
        ts: 1,
        event: None,
        mv: None,
        device: None,
    };
    mem.put_batch(std::slice::from_ref(&old)).await.unwrap();
    (c, old)
}

fn errors_of(mem: &Memory) -> Vec<(String, String)> {
    mem.take_published()
        .into_iter()
        .filter_map(|d| d.reply)
        .map(|r| frame(&r.frame))
        .filter(|f| f["type"] == "error")
        .map(|f| {
            (
                f["code"].as_str().unwrap().into(),
                f["id"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_reused_seq_never_replaces_a_stored_message() {
    let mem = Arc::new(Memory::default());
    let step = MessagingStep::new(mem.ports());
    let (c, old) = given_back_over_a_stored_message(&mem).await;
    let report = step
        .process(vec![send("bob", "alice", "m1", "b1", 0)], 2)
        .await
        .unwrap();
    assert_eq!((report.stored, report.seq_conflicts), (0, 1));
    assert_eq!(errors_of(&mem), vec![("unavailable".into(), "m1".into())]);
    let at = |seq: u64| {
        mem.messages
            .lock()
            .unwrap()
            .get(&(c.to_string(), seq))
            .cloned()
    };
    assert_eq!(at(4), Some(old.clone()), "the stored message stays");
    // The retry (same id) is sequenced anew, on a seq nobody holds.
    step.process(vec![send("bob", "alice", "m1", "b1", 0)], 3)
        .await
        .unwrap();
    let accepted = accepted_frames(&mem);
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["seq"], 5);
    assert_eq!(at(5).map(|m| m.id.to_string()), Some("m1".into()));
    assert_eq!(at(4), Some(old));
}

#[tokio::test]
async fn an_acceptance_whose_seq_holds_another_message_is_void() {
    let mem = Arc::new(Memory::default());
    let step = MessagingStep::new(mem.ports());
    let (c, old) = given_back_over_a_stored_message(&mem).await;
    // What a failed forget leaves: m1 remembered under seq 4 (allocated to it), which holds
    // `old`.
    use crate::ports::SequenceAllocator;
    assert_eq!(
        mem.allocate(&[(c.clone(), 1)]).await[0]
            .clone()
            .unwrap()
            .first,
        4
    );
    let sub = send("bob", "alice", "m1", "b1", 0);
    remember_at(&mem, &sub, 4, 2).await;
    step.process(vec![sub.clone()], 3).await.unwrap();
    assert_eq!(
        errors_of(&mem),
        vec![("unavailable".into(), "m1".into())],
        "never answered with another's seq"
    );
    step.process(vec![sub], 4).await.unwrap();
    let accepted = accepted_frames(&mem);
    assert_eq!(accepted[0]["seq"], 5);
    let at = |seq: u64| {
        mem.messages
            .lock()
            .unwrap()
            .get(&(c.to_string(), seq))
            .cloned()
    };
    assert_eq!(at(4), Some(old));
}

fn accepted_frames(mem: &Memory) -> Vec<serde_json::Value> {
    mem.take_published()
        .into_iter()
        .filter_map(|d| d.reply)
        .map(|r| frame(&r.frame))
        .filter(|f| f["type"] == "accepted")
        .collect()
}

#[tokio::test]
async fn a_partly_failed_batch_write_leaves_no_duplicate_and_no_gap() {
    let mem = Arc::new(Memory::default());
    let mut ports = mem.ports();
    // The write of carol's conversation fails once, after the rest of the batch has landed.
    let carol = ConversationId::direct(&user("alice"), &user("carol")).unwrap();
    ports.chat = Arc::new(crate::faults::FailingWrites::new(
        mem.clone(),
        carol.to_string(),
        1,
    ));
    let step = MessagingStep::new(ports);
    let batch = || {
        vec![
            send("alice", "bob", "m1", "a1", 0),
            send("alice", "carol", "m2", "a1", 0),
        ]
    };
    let report = step.process(batch(), 1).await.unwrap();
    assert_eq!((report.stored, report.unavailable), (0, 2));
    assert_eq!(mem.stored().len(), 1, "bob's message landed");
    mem.take_published();
    // Both senders retry with the same ids.
    step.process(batch(), 2).await.unwrap();
    let stored: Vec<_> = mem
        .stored()
        .iter()
        .map(|m| (m.conversation.to_string(), m.seq, m.id.to_string()))
        .collect();
    assert_eq!(
        stored,
        vec![
            ("dm:alice:bob".to_owned(), 1, "m1".to_owned()),
            ("dm:alice:carol".to_owned(), 1, "m2".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_client_id_reused_for_another_conversation_answers_the_original_and_stores_nothing() {
    let mem = Arc::new(Memory::default());
    online(&mem, "bob", "b1", 0).await;
    online(&mem, "carol", "c1", 1).await;
    let step = MessagingStep::new(mem.ports());
    step.process(vec![send("alice", "bob", "m1", "a1", 0)], 5)
        .await
        .unwrap();
    mem.take_published();
    let mut reuse = send("alice", "carol", "m1", "a1", 0);
    reuse.body = "something else".into();
    let report = step.process(vec![reuse], 9).await.unwrap();
    assert_eq!((report.stored, report.duplicates), (0, 1));
    let out = mem.take_published();
    assert!(
        out.iter()
            .all(|d| d.recipients.is_empty() && d.message.is_none()),
        "nothing delivered: {out:?}"
    );
    let answer = frame(&out[0].reply.as_ref().unwrap().frame);
    assert_eq!(
        (&answer["conversation"], &answer["seq"], &answer["ts"]),
        (
            &serde_json::json!("dm:alice:bob"),
            &serde_json::json!(1),
            &serde_json::json!(5)
        )
    );
    let stored = mem.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].body, "body of m1");
}

#[tokio::test]
async fn a_repeat_in_the_same_conversation_delivers_the_stored_body_not_its_own() {
    let mem = Arc::new(Memory::default());
    online(&mem, "bob", "b1", 0).await;
    let step = MessagingStep::new(mem.ports());
    step.process(vec![send("alice", "bob", "m1", "a1", 0)], 5)
        .await
        .unwrap();
    mem.take_published();
    let mut again = send("alice", "bob", "m1", "a1", 0);
    again.body = "edited".into();
    step.process(vec![again], 9).await.unwrap();
    let bodies: Vec<_> = mem
        .take_published()
        .into_iter()
        .filter_map(|d| d.message)
        .map(|m| frame(&m.frame)["body"].clone())
        .collect();
    assert_eq!(bodies, vec!["body of m1"]);
    assert_eq!(mem.stored()[0].body, "body of m1");
}

#[tokio::test]
async fn a_system_message_whose_store_fails_is_handed_back_then_delivered() {
    let mem = Arc::new(Memory::default());
    online(&mem, "bob", "b1", 0).await;
    let step = MessagingStep::new(mem.ports());
    let mut event = send("alice", "bob", "ev1", "a1", 0);
    event.reply = None;
    mem.set_chat_down(true);
    let first = step.prepare(vec![event.clone()], 1).await;
    assert_eq!(first.retry.len(), 1, "handed back, not dropped");
    assert_eq!(first.report.retried, 1);
    assert!(first.deliveries.is_empty());
    mem.set_chat_down(false);
    let mut prepared = first;
    let retry = std::mem::take(&mut prepared.retry);
    prepared.absorb(step.prepare(retry, 2).await);
    assert!(prepared.retry.is_empty());
    // Remembered on the first try: the second answers that seq and writes the message.
    assert_eq!(mem.stored().len(), 1);
    assert_eq!(mem.stored()[0].seq, 1);
    assert_eq!(prepared.deliveries.len(), 1);
    assert_eq!(prepared.deliveries[0].recipients, vec![user("bob")]);
}

#[tokio::test]
async fn rules_without_io_reject_with_their_codes() {
    let mem = Arc::new(Memory::default());
    let step = MessagingStep::new(mem.ports());
    let mut intruder = send("alice", "bob", "m1", "e1", 0);
    intruder.sender = user("eve");
    let mut group = send("alice", "bob", "g1", "a1", 0);
    group.conversation = ConversationId::parse("group:g_none").unwrap();
    let report = step.process(vec![intruder, group], 1).await.unwrap();
    assert_eq!(report.rejected, 2);
    let codes: Vec<_> = mem
        .take_published()
        .into_iter()
        .map(|d| frame(&d.reply.unwrap().frame)["code"].clone())
        .collect();
    assert_eq!(codes, vec!["forbidden", "not_found"]);
    assert!(mem.stored().is_empty());
}

#[tokio::test]
async fn every_message_is_logged_once_and_direct_ones_indexed_for_both_users() {
    use crate::ports::ConversationLog;
    let mem = Arc::new(Memory::default());
    online(&mem, "alice", "a1", 0).await;
    let step = MessagingStep::new(mem.ports());
    let report = step
        .process(
            vec![
                send("alice", "bob", "m1", "a1", 0),
                send("alice", "bob", "m2", "a1", 0),
            ],
            5,
        )
        .await
        .unwrap();
    assert_eq!(report.logged, 2);
    assert_eq!(mem.log_seqs("dm:alice:bob"), [1, 2]);
    let held = mem.logs.lock().unwrap()["dm:alice:bob"][&1].clone();
    assert_eq!(frame(&held.frame)["type"], "message");
    assert_eq!(frame(&held.frame)["id"], "m1");
    for who in ["alice", "bob"] {
        assert_eq!(
            mem.inbox(&user(who)).await.unwrap(),
            vec![("dm:alice:bob".to_owned(), 2)]
        );
    }

    // Online now: logged all the same, and delivered live.
    online(&mem, "bob", "b1", 1).await;
    mem.take_published();
    let report = step
        .process(vec![send("alice", "bob", "m3", "a1", 0)], 6)
        .await
        .unwrap();
    assert_eq!(report.logged, 1);
    assert_eq!(mem.log_seqs("dm:alice:bob"), [1, 2, 3]);
    assert!(mem
        .take_published()
        .iter()
        .any(|d| d.slot == 1 && d.recipients == vec![user("bob")]));
}

async fn trip(mem: &Memory, members: &[&str]) -> connect_protocol::GroupId {
    let mut sorted = members.to_vec();
    sorted.sort();
    mem.put_group("g_trip", "Trip", sorted[0], members)
}

fn group_send(from: &str, id: &str, conn: &str, slot: u32) -> Submission {
    Submission {
        conversation: ConversationId::parse("group:g_trip").unwrap(),
        sender: user(from),
        id: ClientMsgId::parse(id).unwrap(),
        body: "hi all".into(),
        reply: Some(ReplyTo {
            conn: conn.into(),
            slot,
            region: None,
        }),
        event: None,
        submitted_ms: 0,
        device: None,
        hops: 0,
    }
}

#[tokio::test]
async fn a_group_message_goes_once_per_gateway_to_its_members_only() {
    let mem = Arc::new(Memory::default());
    trip(&mem, &["alice", "bob", "carol", "dave"]).await;
    online(&mem, "alice", "a1", 0).await;
    online(&mem, "bob", "b1", 0).await;
    online(&mem, "carol", "c1", 1).await;
    online(&mem, "erin", "e1", 1).await;
    let step = MessagingStep::new(mem.ports());
    let report = step
        .process(
            vec![
                group_send("alice", "m1", "a1", 0),
                group_send("erin", "x1", "e1", 1),
            ],
            5,
        )
        .await
        .unwrap();
    assert_eq!((report.stored, report.rejected, report.logged), (1, 1, 1));
    assert_eq!(mem.log_seqs("group:g_trip"), [1]);
    let mut out = mem.take_published();
    out.sort_by_key(|d| (d.slot, d.message.is_none()));
    let with_message: Vec<_> = out.iter().filter(|d| d.message.is_some()).collect();
    assert_eq!(with_message.len(), 2, "one record per gateway: {out:?}");
    assert_eq!(with_message[0].recipients, [user("alice"), user("bob")]);
    assert_eq!(with_message[1].recipients, [user("carol")]);
    let m = frame(&with_message[0].message.as_ref().unwrap().frame);
    assert_eq!(
        (m["group"].as_str(), m["seq"].as_u64()),
        (Some("g_trip"), Some(1))
    );
    let refusal = out
        .iter()
        .find_map(|d| d.reply.as_ref().filter(|r| r.conn == "e1"))
        .unwrap();
    assert_eq!(frame(&refusal.frame)["code"], "forbidden");
}

#[tokio::test]
async fn a_membership_change_holds_from_its_event_on() {
    use crate::groups::GroupStore;
    let mem = Arc::new(Memory::default());
    let id = trip(&mem, &["alice", "bob", "carol"]).await;
    for (who, conn) in [("alice", "a1"), ("bob", "b1"), ("carol", "c1")] {
        online(&mem, who, conn, 0).await;
    }
    let step = MessagingStep::new(mem.ports());
    step.process(vec![group_send("alice", "m1", "a1", 0)], 1)
        .await
        .unwrap();
    mem.take_published();

    // Removed in the table: the cached membership still says carol until the event passes.
    mem.remove_member(&id, &user("carol"), &user("alice"))
        .await
        .unwrap();
    let removal = Submission {
        event: Some(connect_protocol::GroupEvent {
            kind: "member_removed".into(),
            user: Some("carol".into()),
        }),
        reply: None,
        body: String::new(),
        ..group_send("alice", "ev-1", "a1", 0)
    };
    step.process(vec![removal, group_send("alice", "m2", "a1", 0)], 2)
        .await
        .unwrap();
    let out = mem.take_published();
    let to = |seq: u64| -> Vec<UserId> {
        out.iter()
            .filter(|d| d.message.as_ref().is_some_and(|m| m.seq == seq))
            .flat_map(|d| d.recipients.clone())
            .collect()
    };
    assert!(to(2).contains(&user("carol")), "carol gets her own removal");
    assert!(!to(3).contains(&user("carol")), "and nothing after it");
    assert!(to(3).contains(&user("bob")));
    assert_eq!(
        frame(
            &out.iter()
                .find(|d| d.message.as_ref().is_some_and(|m| m.seq == 2))
                .unwrap()
                .message
                .as_ref()
                .unwrap()
                .frame
        )["event"]["kind"],
        "member_removed"
    );
}

#[tokio::test]
async fn sends_that_waited_too_long_are_refused_unprocessed_and_a_retry_goes_through() {
    let mem = Arc::new(Memory::default());
    online(&mem, "alice", "a1", 0).await;
    let step = MessagingStep::new(mem.ports()).shed_after_ms(500);
    let late = Submission {
        submitted_ms: 10_000,
        ..send("alice", "bob", "late", "a1", 0)
    };
    let fresh = Submission {
        submitted_ms: 10_400,
        ..send("alice", "bob", "fresh", "a1", 0)
    };
    let report = step.process(vec![late, fresh], 10_600).await.unwrap();
    assert_eq!((report.shed, report.stored), (1, 1));
    let replies: Vec<serde_json::Value> = mem
        .take_published()
        .iter()
        .filter_map(|d| d.reply.as_ref().map(|r| frame(&r.frame)))
        .collect();
    let late_reply = replies.iter().find(|f| f["id"] == "late").unwrap();
    assert_eq!(
        (late_reply["type"].as_str(), late_reply["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    let fresh_reply = replies.iter().find(|f| f["id"] == "fresh").unwrap();
    assert_eq!(
        (fresh_reply["type"].as_str(), fresh_reply["seq"].as_u64()),
        (Some("accepted"), Some(1))
    );
    // Nothing of the shed send was stored or remembered: its retry is a new message (seq 2).
    let retry = Submission {
        submitted_ms: 11_000,
        ..send("alice", "bob", "late", "a1", 0)
    };
    let report = step.process(vec![retry], 11_100).await.unwrap();
    assert_eq!((report.shed, report.stored), (0, 1));
    // A send accepted before is answered with its seq however late (a replay after a crash).
    let replay = Submission {
        submitted_ms: 1,
        ..send("alice", "bob", "fresh", "a1", 0)
    };
    let report = step.process(vec![replay], 99_999).await.unwrap();
    assert_eq!((report.shed, report.duplicates), (0, 1));
    // System messages are never shed.
    let event = Submission {
        event: Some(connect_protocol::GroupEvent {
            kind: "member_added".into(),
            user: Some("bob".into()),
        }),
        reply: None,
        submitted_ms: 1,
        ..send("alice", "bob", "ev", "a1", 0)
    };
    assert_eq!(step.process(vec![event], 99_999).await.unwrap().shed, 0);
}

#[tokio::test]
async fn a_membership_change_holds_for_the_next_batch_before_its_event_arrives() {
    use crate::groups::GroupStore;
    let mem = Arc::new(Memory::default());
    let id = trip(&mem, &["alice", "bob", "carol"]).await;
    for (who, conn) in [
        ("alice", "a1"),
        ("bob", "b1"),
        ("carol", "c1"),
        ("dave", "d1"),
    ] {
        online(&mem, who, conn, 0).await;
    }
    let step = MessagingStep::new(mem.ports());
    step.process(vec![group_send("alice", "m1", "a1", 0)], 1)
        .await
        .unwrap();
    mem.take_published();
    // The admin calls answer (the version is bumped with each write); no event has passed.
    mem.remove_member(&id, &user("carol"), &user("alice"))
        .await
        .unwrap();
    mem.add_member(
        &id,
        &user("dave"),
        &user("alice"),
        crate::groups::Caps::UNBOUNDED,
    )
    .await
    .unwrap();
    step.process(vec![group_send("alice", "m2", "a1", 0)], 2)
        .await
        .unwrap();
    let recipients: Vec<UserId> = mem
        .take_published()
        .into_iter()
        .flat_map(|d| d.recipients)
        .collect();
    assert!(recipients.contains(&user("dave")), "{recipients:?}");
    assert!(!recipients.contains(&user("carol")), "{recipients:?}");
}

#[tokio::test]
async fn a_replayed_group_message_goes_to_the_members_at_its_seq_not_to_later_joiners() {
    use crate::groups::GroupStore;
    let mem = Arc::new(Memory::default());
    let id = trip(&mem, &["alice", "bob"]).await;
    for (who, conn) in [("alice", "a1"), ("bob", "b1"), ("dave", "d1")] {
        online(&mem, who, conn, 0).await;
    }
    let step = MessagingStep::new(mem.ports());
    step.process(vec![group_send("alice", "m1", "a1", 0)], 1)
        .await
        .unwrap();
    let first = mem.stored();
    assert_eq!(first[0].mv, Some(1), "sequenced under the group's version");
    mem.take_published();

    // dave joins (version 2); then m1 is replayed (a crash before its batch was committed).
    mem.add_member(
        &id,
        &user("dave"),
        &user("alice"),
        crate::groups::Caps::UNBOUNDED,
    )
    .await
    .unwrap();
    step.process(vec![group_send("alice", "m1", "a1", 0)], 2)
        .await
        .unwrap();
    let again: Vec<UserId> = mem
        .take_published()
        .iter()
        .filter(|d| d.message.is_some())
        .flat_map(|d| d.recipients.clone())
        .collect();
    // (The sender's own connection is skipped by its gateway: it gets `accepted`.)
    assert_eq!(
        again,
        [user("alice"), user("bob")],
        "delivered again, but not to dave"
    );

    // A message sequenced after the join goes to dave, and carries the new version.
    step.process(vec![group_send("alice", "m2", "a1", 0)], 3)
        .await
        .unwrap();
    let to: Vec<UserId> = mem
        .take_published()
        .iter()
        .filter(|d| d.message.is_some())
        .flat_map(|d| d.recipients.clone())
        .collect();
    assert!(to.contains(&user("dave")));
    assert_eq!(mem.stored().last().unwrap().mv, Some(2));
}

#[tokio::test]
async fn a_member_with_several_sessions_on_a_gateway_is_one_recipient_there() {
    let mem = Arc::new(Memory::default());
    trip(&mem, &["alice", "bob", "carol"]).await;
    online(&mem, "alice", "a1", 0).await;
    for (conn, slot) in [("b1", 0), ("b2", 0), ("b3", 1)] {
        online(&mem, "bob", conn, slot).await;
    }
    online(&mem, "carol", "c1", 0).await;
    let step = MessagingStep::new(mem.ports());
    step.process(vec![group_send("alice", "m1", "a1", 0)], 1)
        .await
        .unwrap();
    let mut out: Vec<_> = mem
        .take_published()
        .into_iter()
        .filter(|d| d.message.is_some())
        .map(|d| (d.slot, d.recipients))
        .collect();
    out.sort();
    assert_eq!(
        out,
        [
            (0, vec![user("alice"), user("bob"), user("carol")]),
            (1, vec![user("bob")])
        ]
    );
}

fn two_regions(local: &str, peer: &str) -> crate::regions::Regions {
    crate::regions::Regions::parse(local, peer).unwrap()
}

#[tokio::test]
async fn a_send_homed_in_another_region_is_forwarded_there_unanswered() {
    let mem = Arc::new(Memory::default());
    online(&mem, "bob", "b1", 0).await;
    let sub = send("alice", "bob", "m1", "a1", 0);
    lock_homes(&mem).insert(sub.conversation.clone(), "b".into());
    let step = MessagingStep::new(mem.ports()).regions(two_regions("a", "b"));
    let prepared = step.prepare(vec![sub.clone()], 1000).await;
    assert!(prepared.deliveries.is_empty(), "{:?}", prepared.deliveries);
    assert!(prepared.replicas.is_empty());
    assert_eq!(prepared.report.forwarded, 1);
    let (home, forwarded) = &prepared.forwards[0];
    assert_eq!(home, "b");
    assert_eq!(forwarded.hops, 1);
    assert_eq!(
        forwarded.reply.as_ref().unwrap().region.as_deref(),
        Some("a")
    );
    assert_eq!(forwarded.id, sub.id);
    assert!(
        mem.messages.lock().unwrap().is_empty(),
        "nothing stored here"
    );
    // Forwarded too often (a home moving back and forth): answered, not sent on.
    let mut tired = sub.clone();
    tired.hops = crate::regions::MAX_HOPS;
    let prepared = step.prepare(vec![tired], 1000).await;
    assert!(prepared.forwards.is_empty());
    let reply = prepared.deliveries[0].reply.as_ref().unwrap();
    assert_eq!(frame(&reply.frame)["code"], "unavailable");
    // A home that is not a peer (a setup renamed its regions): answered, not forwarded.
    let single = MessagingStep::new(mem.ports()).regions(two_regions("a", "c"));
    let prepared = single.prepare(vec![sub], 1000).await;
    assert!(prepared.forwards.is_empty());
    assert_eq!(prepared.report.unavailable, 1);
}

fn lock_homes(mem: &Memory) -> std::sync::MutexGuard<'_, HashMap<ConversationId, String>> {
    mem.homed_elsewhere.lock().unwrap()
}

#[tokio::test]
async fn the_home_answers_a_forwarded_send_through_the_replica_and_delivers_here() {
    let mem = Arc::new(Memory::default());
    online(&mem, "bob", "b1", 0).await;
    let mut sub = send("alice", "bob", "m1", "a1", 5);
    sub.hops = 1;
    sub.reply.as_mut().unwrap().region = Some("b".into());
    let step = MessagingStep::new(mem.ports()).regions(two_regions("a", "b"));
    let prepared = step.prepare(vec![sub], 1000).await;
    // Here: bob's live session gets the message; nothing goes to slot 5 (that is region b's).
    assert_eq!(prepared.deliveries.len(), 1, "{:?}", prepared.deliveries);
    assert_eq!(prepared.deliveries[0].slot, 0);
    assert!(prepared.deliveries[0].reply.is_none());
    let replica = &prepared.replicas[0];
    assert_eq!(replica.home, "a");
    assert!(replica.deliver);
    assert_eq!(replica.message.as_ref().unwrap().seq, 1);
    assert_eq!(replica.reply.as_ref().unwrap().region.as_deref(), Some("b"));
    // A refused forwarded send: its error goes back the same way.
    let mut stranger = send("carol", "dave", "m2", "c1", 5);
    stranger.conversation = ConversationId::direct(&user("alice"), &user("bob")).unwrap();
    stranger.reply.as_mut().unwrap().region = Some("b".into());
    let prepared = step.prepare(vec![stranger], 1000).await;
    assert!(prepared.deliveries.is_empty());
    let replica = &prepared.replicas[0];
    assert!(replica.message.is_none());
    assert_eq!(
        replica.error.as_ref().unwrap().code,
        connect_protocol::ErrorCode::Forbidden
    );
    assert_eq!(replica.id.as_deref(), Some("m2"));
}

#[tokio::test]
async fn a_replica_is_delivered_logged_and_remembered_here_and_not_sent_back() {
    let home = Arc::new(Memory::default());
    let mut sub = send("alice", "bob", "m1", "a1", 5);
    sub.hops = 1;
    sub.reply.as_mut().unwrap().region = Some("b".into());
    let at_home = MessagingStep::new(home.ports()).regions(two_regions("a", "b"));
    let replicas = at_home.prepare(vec![sub.clone()], 1000).await.replicas;

    let here = Arc::new(Memory::default());
    online(&here, "bob", "b1", 2).await;
    online(&here, "alice", "a9", 2).await;
    let step = MessagingStep::new(here.ports()).regions(two_regions("b", "a"));
    let prepared = step.relay(replicas).await;
    assert!(
        prepared.replicas.is_empty(),
        "a replica is never replicated again"
    );
    assert_eq!(prepared.report.relayed, 1);
    // The members' sessions here (slot 2), and the sender's `accepted` on its gateway (slot 5).
    let d = &prepared.deliveries[0];
    assert_eq!(d.slot, 2);
    assert_eq!(d.recipients, vec![user("alice"), user("bob")]);
    let d = &prepared.deliveries[1];
    assert_eq!(d.slot, 5);
    let reply = d.reply.as_ref().unwrap();
    assert_eq!(reply.conn, "a1");
    assert_eq!(frame(&reply.frame)["seq"], 1);
    // Remembered: a retry in this region answers the original seq.
    let known = here.get(&[sub.dedupe_key()]).await.unwrap();
    assert_eq!(known[0].as_ref().map(|a| a.seq), Some(1));
    // Logged here, for devices that connect to this region.
    assert_eq!(
        here.logs
            .lock()
            .unwrap()
            .values()
            .map(|l| l.len())
            .sum::<usize>(),
        1
    );
    // Another region's answer to a connection elsewhere is not delivered here.
    let elsewhere = Arc::new(Memory::default());
    let step_c = MessagingStep::new(elsewhere.ports()).regions(two_regions("c", "a,b"));
    let mut replica = at_home.prepare(vec![sub], 1000).await.replicas;
    replica[0].deliver = false;
    assert!(step_c.relay(replica).await.deliveries.is_empty());
}

/// The slots a batch's deliveries carry `message`s to, and whether an `accepted` went out.
fn delivered(mem: &Memory) -> (Vec<u32>, bool) {
    let out = mem.take_published();
    let slots = out
        .iter()
        .filter(|d| d.message.is_some())
        .map(|d| d.slot)
        .collect();
    let accepted = out.iter().any(|d| {
        d.reply
            .as_ref()
            .is_some_and(|r| frame(&r.frame)["type"] == "accepted")
    });
    (slots, accepted)
}

#[tokio::test]
async fn a_log_write_that_fails_is_tried_again_before_anything_is_answered() {
    // Found by the fault suite (Redis restarted mid-stream): a message whose log write failed
    // was accepted but was in no device's backlog.
    let mem = Arc::new(Memory::default());
    online(&mem, "bob", "b1", 1).await;
    let step = MessagingStep::new(mem.ports());
    mem.log_failures
        .store(3, std::sync::atomic::Ordering::SeqCst);
    let report = step
        .process(vec![send("alice", "bob", "m1", "a1", 0)], 1)
        .await
        .unwrap();
    assert_eq!((report.log_retries, report.logged), (3, 1));
    assert_eq!(mem.log_seqs("dm:alice:bob"), vec![1]);
    assert_eq!(delivered(&mem), (vec![1], true));
}

#[tokio::test]
async fn a_failed_lookup_is_tried_again_then_given_up_with_the_message_logged() {
    let mem = Arc::new(Memory::default());
    online(&mem, "bob", "b1", 1).await;
    let step = MessagingStep::new(mem.ports());
    mem.lookup_failures
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let report = step
        .process(vec![send("alice", "bob", "m1", "a1", 0)], 1)
        .await
        .unwrap();
    assert_eq!(report.lookup_retries, 2);
    assert_eq!(
        delivered(&mem),
        (vec![1], true),
        "delivered live after the retries"
    );
    // Down for longer: no live delivery, but accepted, and in bob's backlog.
    mem.lookup_failures
        .store(100, std::sync::atomic::Ordering::SeqCst);
    let report = step
        .process(vec![send("alice", "bob", "m2", "a1", 0)], 2)
        .await
        .unwrap();
    assert_eq!(report.lookup_retries, 4);
    assert_eq!(delivered(&mem), (vec![], true));
    assert_eq!(mem.log_seqs("dm:alice:bob"), vec![1, 2]);
}

fn read(
    who: &str,
    conversation: &str,
    seq: u64,
    conn: &str,
    device: &str,
) -> crate::regions::Inbound {
    crate::regions::Inbound::Marker(crate::model::MarkerUpdate {
        conversation: ConversationId::parse(conversation).unwrap(),
        user: user(who),
        read: seq,
        delivered: 0,
        device: Some(device.into()),
        reply: Some(ReplyTo {
            conn: conn.into(),
            slot: 0,
            region: None,
        }),
    })
}

/// Every signal published: (recipients, frame, the connection left out).
fn signals(mem: &Memory) -> Vec<(Vec<UserId>, serde_json::Value, Option<String>)> {
    mem.take_published()
        .into_iter()
        .filter_map(|d| {
            let s = d.signal?;
            Some((d.recipients, frame(&s.frame), s.except))
        })
        .collect()
}

/// Runs one batch holding `update` and publishes what it prepared: its report and the signals.
async fn mark(
    mem: &Arc<Memory>,
    step: &MessagingStep,
    update: crate::regions::Inbound,
    now: u64,
) -> (
    StepReport,
    Vec<(Vec<UserId>, serde_json::Value, Option<String>)>,
) {
    let p = step.prepare_inbound(vec![update], now).await;
    crate::ports::DeliveryBus::publish(&**mem, &p.deliveries)
        .await
        .unwrap();
    (p.report, signals(mem))
}

#[tokio::test]
async fn a_read_is_clamped_stored_forward_only_and_sent_as_a_receipt_to_both_users() {
    let mem = Arc::new(Memory::default());
    online(&mem, "alice", "a1", 0).await;
    online(&mem, "bob", "b1", 0).await;
    online(&mem, "bob", "b2", 1).await;
    let step = MessagingStep::new(mem.ports());
    for id in ["m1", "m2", "m3"] {
        step.process(vec![send("alice", "bob", id, "a1", 0)], 1000)
            .await
            .unwrap();
    }
    mem.take_published();
    let dm = "dm:alice:bob";
    let (report, got) = mark(&mem, &step, read("bob", dm, 2, "b1", "phone"), 2000).await;
    assert_eq!(report.markers, 1);
    assert_eq!(got.len(), 2, "one record per gateway: {got:?}");
    let mut to: Vec<_> = got.iter().map(|(to, _, _)| to.clone()).collect();
    to.sort();
    assert_eq!(
        to,
        vec![vec![user("alice"), user("bob")], vec![user("bob")]]
    );
    for (_, receipt, except) in &got {
        assert_eq!(
            except.as_deref(),
            Some("b1"),
            "not to the reading connection"
        );
        assert_eq!(
            (
                receipt["type"].as_str(),
                receipt["user"].as_str(),
                receipt["read"].as_u64(),
                receipt["delivered"].as_u64()
            ),
            (Some("receipt"), Some("bob"), Some(2), Some(2))
        );
    }
    let cursors = crate::ports::ConversationLog::cursors(&*mem, &user("bob"), "phone")
        .await
        .unwrap();
    assert_eq!(cursors.get(dm), Some(&2), "a read acks for its device");
    // A lower read moves nothing and sends nothing; one past the head counts as the head.
    let (report, got) = mark(&mem, &step, read("bob", dm, 1, "b1", "phone"), 3000).await;
    assert_eq!((report.markers, got.len()), (0, 0));
    let (report, got) = mark(&mem, &step, read("bob", dm, 99, "b2", "laptop"), 4000).await;
    assert_eq!(report.markers, 1);
    assert!(
        got.iter()
            .all(|(_, r, _)| r["read"] == 3 && r["ts"] == 4000),
        "{got:?}"
    );
    let cursors = crate::ports::ConversationLog::cursors(&*mem, &user("bob"), "laptop")
        .await
        .unwrap();
    assert_eq!(
        cursors.get(dm),
        Some(&3),
        "the device's cursor stops at the head"
    );
    // A read past the head that moves no marker still acks only up to the head: a cursor past
    // it would skip the messages still to come.
    let (report, _) = mark(&mem, &step, read("bob", dm, 99, "b1", "phone"), 5000).await;
    assert_eq!(report.markers, 0);
    let cursors = crate::ports::ConversationLog::cursors(&*mem, &user("bob"), "phone")
        .await
        .unwrap();
    assert_eq!(cursors.get(dm), Some(&3));
    let stored = mem.markers.lock().unwrap()[&(user("bob"), ConversationId::parse(dm).unwrap())];
    assert_eq!((stored.read, stored.delivered), (3, 3));
}

#[tokio::test]
async fn a_read_from_a_non_member_is_forbidden_and_stores_nothing() {
    let mem = Arc::new(Memory::default());
    online(&mem, "carol", "c1", 0).await;
    trip(&mem, &["alice", "bob"]).await;
    let step = MessagingStep::new(mem.ports());
    let p = step
        .prepare_inbound(vec![read("carol", "group:g_trip", 1, "c1", "d")], 1000)
        .await;
    assert_eq!((p.report.markers, p.report.rejected), (0, 1));
    let answer = p.deliveries[0].reply.as_ref().unwrap();
    assert_eq!(
        (answer.conn.as_str(), frame(&answer.frame)["code"].as_str()),
        ("c1", Some("forbidden"))
    );
    assert!(mem.markers.lock().unwrap().is_empty());
}

#[tokio::test]
async fn in_a_group_over_the_live_limit_only_the_readers_own_connections_get_the_receipt() {
    let mem = Arc::new(Memory::default());
    trip(&mem, &["alice", "bob", "carol"]).await;
    for (who, conn) in [("alice", "a1"), ("bob", "b1"), ("carol", "c1")] {
        online(&mem, who, conn, 0).await;
    }
    let step = MessagingStep::new(mem.ports()).receipts_live_max_members(2);
    step.process(vec![group_send("alice", "g1", "a1", 0)], 1000)
        .await
        .unwrap();
    mem.take_published();
    let (_, got) = mark(&mem, &step, read("bob", "group:g_trip", 5, "b9", "d"), 2000).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, vec![user("bob")]);
    let small = MessagingStep::new(mem.ports()).receipts_live_max_members(3);
    let (_, got) = mark(
        &mem,
        &small,
        read("carol", "group:g_trip", 1, "c9", "d"),
        3000,
    )
    .await;
    assert_eq!(got[0].0.len(), 3, "every member: {got:?}");
}

#[tokio::test]
async fn the_inbox_costs_one_head_per_conversation_whatever_the_groups_size() {
    let mem = Arc::new(Memory::default());
    let members: Vec<String> = (0..500).map(|i| format!("u{i:03}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    trip(&mem, &names).await;
    let step = MessagingStep::new(mem.ports());
    step.process(
        vec![
            group_send("u001", "g1", "c1", 0),
            group_send("u002", "g2", "c2", 0),
            send("alice", "bob", "d1", "a1", 0),
            send("bob", "alice", "d2", "b1", 0),
        ],
        1000,
    )
    .await
    .unwrap();
    let group = ConversationId::parse("group:g_trip").unwrap();
    let dm = ConversationId::parse("dm:alice:bob").unwrap();
    let heads = mem.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "one head per conversation: {heads:?}");
    assert_eq!(heads[&group].seq, 2);
    assert_eq!(heads[&dm].seq, 2);
    let markers = mem.markers.lock().unwrap().clone();
    assert_eq!(markers.len(), 4, "only the senders' markers: {markers:?}");
    assert_eq!(markers[&(user("bob"), dm.clone())].read, 2);
    assert_eq!(markers[&(user("alice"), dm.clone())].read, 1);
    assert_eq!(
        mem.listings.lock().unwrap()[&user("alice")][&dm],
        heads[&dm],
        "a direct conversation is placed under both users"
    );
    // A repeat answered after newer messages does not move the head back.
    step.process(vec![send("alice", "bob", "d3", "a1", 0)], 2000)
        .await
        .unwrap();
    assert_eq!(mem.heads.lock().unwrap()[&dm].seq, 3);
    step.process(vec![send("alice", "bob", "d1", "a1", 0)], 3000)
        .await
        .unwrap();
    assert_eq!(mem.heads.lock().unwrap()[&dm].seq, 3);
    assert_eq!(mem.listings.lock().unwrap()[&user("bob")][&dm].seq, 3);
}

#[tokio::test]
async fn a_read_and_a_send_of_the_same_user_in_one_batch_leave_the_marker_at_the_send() {
    let mem = Arc::new(Memory::default());
    let step = MessagingStep::new(mem.ports());
    for id in ["m1", "m2"] {
        step.process(vec![send("alice", "bob", id, "a1", 0)], 1000)
            .await
            .unwrap();
    }
    let dm = ConversationId::parse("dm:alice:bob").unwrap();
    // bob reads 2 and answers (seq 3) in the same batch; carol's read elsewhere goes alongside.
    let batch = vec![
        read("bob", "dm:alice:bob", 2, "b1", "phone"),
        crate::regions::Inbound::Send(send("bob", "alice", "r1", "b1", 0)),
    ];
    let p = step.prepare_inbound(batch, 2000).await;
    assert_eq!(p.report.stored, 1);
    let stored = mem.markers.lock().unwrap()[&(user("bob"), dm.clone())];
    assert_eq!(
        stored.read, 3,
        "the send's seq, not the read before it: {stored:?}"
    );
    assert_eq!(
        mem.marker_reads.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the send moved the marker: the read costs no marker read or write of its own"
    );
    let cursors = crate::ports::ConversationLog::cursors(&*mem, &user("bob"), "phone")
        .await
        .unwrap();
    assert_eq!(
        cursors.get(dm.to_string().as_str()),
        Some(&2),
        "the read still acks"
    );
    // A read the send does not cover (past it) is marked after the send, clamped to the head.
    let batch = vec![
        read("bob", "dm:alice:bob", 99, "b1", "phone"),
        crate::regions::Inbound::Send(send("bob", "alice", "r2", "b1", 0)),
        crate::regions::Inbound::Send(send("alice", "bob", "m3", "a1", 0)),
    ];
    let p = step.prepare_inbound(batch, 3000).await;
    assert_eq!((p.report.stored, p.report.markers), (2, 1));
    let stored = mem.markers.lock().unwrap()[&(user("bob"), dm.clone())];
    assert_eq!((stored.read, stored.delivered), (5, 5), "{stored:?}");
}

#[tokio::test]
async fn with_the_log_gone_a_read_is_clamped_to_the_last_stored_message() {
    use crate::ports::ChatStore;
    let mem = Arc::new(Memory::default());
    let dm = ConversationId::parse("dm:alice:bob").unwrap();
    let stored: Vec<StoredMessage> = (1..=2)
        .map(|seq| StoredMessage {
            conversation: dm.clone(),
            seq,
            from: user("alice"),
            id: ClientMsgId::parse(format!("m{seq}")).unwrap(),
            body: "hi".into(),
            ts: seq,
            event: None,
            mv: None,
            device: None,
        })
        .collect();
    // In the chat table only (Redis lost the conversation's log).
    mem.put_batch(&stored).await.unwrap();
    let step = MessagingStep::new(mem.ports());
    let (report, _) = mark(
        &mem,
        &step,
        read("bob", "dm:alice:bob", 99, "b1", "phone"),
        1000,
    )
    .await;
    assert_eq!(report.markers, 1);
    assert_eq!(mem.markers.lock().unwrap()[&(user("bob"), dm)].read, 2);
}

fn typing(who: &str, conversation: &str, conn: &str, ts: u64) -> crate::regions::Inbound {
    crate::regions::Inbound::Typing(crate::model::TypingUpdate {
        conversation: ConversationId::parse(conversation).unwrap(),
        user: user(who),
        stop: false,
        ts,
        reply: ReplyTo {
            conn: conn.into(),
            slot: 0,
            region: None,
        },
    })
}

#[tokio::test]
async fn typing_reaches_the_other_members_only_and_stores_nothing() {
    let mem = Arc::new(Memory::default());
    trip(&mem, &["alice", "bob", "carol"]).await;
    for (who, conn) in [
        ("alice", "a1"),
        ("alice", "a2"),
        ("bob", "b1"),
        ("carol", "c1"),
    ] {
        online(&mem, who, conn, 0).await;
    }
    online(&mem, "dave", "d1", 0).await;
    let step = MessagingStep::new(mem.ports());
    // Two from alice in one batch: the newest goes, once.
    let p = step
        .prepare_inbound(
            vec![
                typing("alice", "group:g_trip", "a1", 1000),
                typing("alice", "group:g_trip", "a1", 1100),
            ],
            1200,
        )
        .await;
    assert_eq!((p.report.typing, p.report.stored), (1, 0));
    crate::ports::DeliveryBus::publish(&*mem, &p.deliveries)
        .await
        .unwrap();
    let got = signals(&mem);
    assert_eq!(got.len(), 1, "{got:?}");
    let (mut to, frame, except) = got[0].clone();
    to.sort();
    assert_eq!(
        to,
        vec![user("bob"), user("carol")],
        "not the typist's own connections"
    );
    assert_eq!(
        frame,
        serde_json::json!({"type":"typing","conversation":"group:g_trip","user":"alice"})
    );
    assert_eq!(except, None);
    assert!(mem.log_seqs("group:g_trip").is_empty(), "nothing logged");
    // A non-member is answered forbidden; a signal that waited too long is dropped.
    let p = step
        .prepare_inbound(vec![typing("dave", "group:g_trip", "d1", 2000)], 2000)
        .await;
    assert_eq!((p.report.typing, p.report.rejected), (0, 1));
    let answer = p.deliveries[0].reply.as_ref().unwrap();
    assert_eq!(
        (answer.conn.as_str(), frame_of(&answer.frame)),
        ("d1", Some("forbidden".to_owned()))
    );
    let p = step
        .prepare_inbound(vec![typing("bob", "group:g_trip", "b1", 1000)], 4000)
        .await;
    assert_eq!((p.report.typing, p.report.typing_dropped), (0, 1));
    assert!(p.deliveries.is_empty());
    // A group above the limit gets none; a direct conversation's peer does.
    let small = MessagingStep::new(mem.ports()).typing_limits(2000, 2);
    let p = small
        .prepare_inbound(vec![typing("bob", "group:g_trip", "b1", 5000)], 5000)
        .await;
    assert_eq!((p.report.typing, p.report.typing_dropped), (0, 1));
    let p = small
        .prepare_inbound(vec![typing("bob", "dm:alice:bob", "b1", 5000)], 5000)
        .await;
    assert_eq!(p.report.typing, 1);
    assert_eq!(p.deliveries[0].recipients, vec![user("alice")]);
}

fn frame_of(text: &str) -> Option<String> {
    frame(text)["code"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn typing_crosses_to_the_other_regions_once_and_is_never_answered_there() {
    // Region a: alice types; the signal goes to a's sessions and, once, to region b.
    let a = Arc::new(Memory::default());
    trip(&a, &["alice", "bob"]).await;
    let step_a = MessagingStep::new(a.ports()).regions(two_regions("a", "b"));
    let now = crate::now_ms();
    let p = step_a
        .prepare_inbound(vec![typing("alice", "group:g_trip", "a1", now)], now)
        .await;
    assert_eq!(p.replicas.len(), 1, "one replica for region b");
    let replica = p.replicas[0].clone();
    assert!(replica.message.is_none() && replica.typing.is_some());
    assert_eq!(
        replica.typing.as_ref().unwrap().reply.region.as_deref(),
        Some("a"),
        "the typist's connection is named as region a's"
    );
    // Region b: bob's connection there gets it; nothing is replicated back, nothing stored.
    let b = Arc::new(Memory::default());
    trip(&b, &["alice", "bob"]).await;
    online(&b, "bob", "b1", 0).await;
    let step_b = MessagingStep::new(b.ports()).regions(two_regions("b", "a"));
    let p = step_b
        .prepare_inbound(vec![crate::regions::Inbound::Replica(replica.clone())], now)
        .await;
    assert_eq!(p.report.typing, 1);
    assert!(p.replicas.is_empty(), "never replicated again");
    crate::ports::DeliveryBus::publish(&*b, &p.deliveries)
        .await
        .unwrap();
    let got = signals(&b);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, vec![user("bob")]);
    assert!(b.log_seqs("group:g_trip").is_empty());
    // A typist who is no member in region b's view is dropped there, not answered.
    let mut stranger = replica;
    if let Some(t) = &mut stranger.typing {
        t.user = user("mallory");
    }
    let p = step_b
        .prepare_inbound(vec![crate::regions::Inbound::Replica(stranger)], now)
        .await;
    assert_eq!((p.report.typing_dropped, p.report.rejected), (1, 0));
    assert!(
        p.deliveries.is_empty(),
        "no answer to a connection in region a"
    );
}
