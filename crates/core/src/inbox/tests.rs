use std::sync::Arc;

use connect_protocol::{ClientMsgId, ConversationId, UserId};

use super::*;
use crate::groups::GroupStore;
use crate::memory::Memory;
use crate::messaging::MessagingStep;
use crate::model::{Markers, Submission};

fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn sub(from: &str, conversation: ConversationId, id: &str) -> Submission {
    Submission {
        conversation,
        sender: user(from),
        id: ClientMsgId::parse(id).unwrap(),
        body: format!("body {id}"),
        reply: None,
        event: None,
        submitted_ms: 0,
        device: None,
        hops: 0,
    }
}

fn dm(a: &str, b: &str) -> ConversationId {
    ConversationId::direct(&user(a), &user(b)).unwrap()
}

async fn page(mem: &Arc<Memory>, who: &str, limit: usize, cursor: Option<&str>) -> Page {
    let ports = InboxPorts {
        index: &**mem,
        markers: &**mem,
        groups: &**mem,
        chat: &**mem,
        history: &**mem,
    };
    let query = Query::parse(|name| match name {
        "limit" => Some(Box::leak(limit.to_string().into_boxed_str())),
        "cursor" => cursor.map(|c| &*Box::leak(c.to_owned().into_boxed_str())),
        _ => None,
    })
    .unwrap();
    read(&ports, &user(who), &query).await.unwrap()
}

#[tokio::test]
async fn newest_first_with_unread_counts_paged_exactly_once_and_a_removed_member_loses_the_group() {
    let mem = Arc::new(Memory::default());
    let trip = mem.put_group("g_trip", "Trip", "alice", &["alice", "bob"]);
    // Every message moves its conversation's place (no step): the order is exact on every page.
    let step = MessagingStep::new(mem.ports()).place_step_ms(0);
    let group = ConversationId::group(trip.clone());
    let sends = [
        ("bob", dm("alice", "bob"), "1"),
        ("carol", dm("alice", "carol"), "2"),
        ("alice", group.clone(), "3"),
        ("bob", group.clone(), "4"),
        ("carol", dm("alice", "carol"), "5"),
        ("dave", dm("alice", "dave"), "6"),
    ];
    for (ts, (from, conversation, id)) in sends.into_iter().enumerate() {
        step.process(vec![sub(from, conversation, id)], 1000 + ts as u64)
            .await
            .unwrap();
    }
    let p = page(&mem, "alice", 50, None).await;
    let order: Vec<(&str, u64, u64)> = p
        .conversations
        .iter()
        .map(|i| (i.conversation.as_str(), i.read, i.unread))
        .collect();
    assert_eq!(
        order,
        [
            ("dm:alice:dave", 0, 1),
            ("dm:alice:carol", 0, 2),
            ("group:g_trip", 1, 1),
            ("dm:alice:bob", 0, 1),
        ],
        "newest first; alice's own send moved her read marker"
    );
    assert_eq!(p.next, None);
    let carol = &p.conversations[1];
    assert_eq!(carol.with.as_deref(), Some("carol"));
    assert_eq!(carol.last.as_ref().unwrap().body, "body 5");
    let g = &p.conversations[2];
    assert_eq!(
        (g.group.as_deref(), g.name.as_deref()),
        (Some("g_trip"), Some("Trip"))
    );
    // limit=1 walks every conversation exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let p = page(&mem, "alice", 1, cursor.as_deref()).await;
        seen.extend(p.conversations.iter().map(|i| i.conversation.clone()));
        match p.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(
        seen,
        order
            .iter()
            .map(|(c, _, _)| c.to_string())
            .collect::<Vec<_>>()
    );
    // bob is removed from the group: it leaves his inbox.
    assert_eq!(page(&mem, "bob", 50, None).await.conversations.len(), 2);
    mem.remove_member(&trip, &user("bob"), &user("alice"))
        .await
        .unwrap();
    let p = page(&mem, "bob", 50, None).await;
    assert_eq!(p.conversations.len(), 1);
    assert_eq!(p.conversations[0].conversation, "dm:alice:bob");
}

#[test]
fn a_cursor_that_is_not_ours_is_a_bad_request() {
    for bad in ["x", "@@@", "MTIz"] {
        assert_eq!(
            Cursor::decode(bad).unwrap_err().code,
            ErrorCode::BadRequest,
            "{bad}"
        );
    }
    let c = Cursor(crate::ports::Recency {
        ts: 5,
        conversation: "dm:a:b".into(),
    });
    assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
    assert!(Query::parse(|n| (n == "limit").then_some("101")).is_err());
    assert!(Query::parse(|n| (n == "limit").then_some("0")).is_err());
}

#[tokio::test]
async fn receipts_list_members_with_markers_by_user_paged_members_only() {
    let mem = Arc::new(Memory::default());
    let names: Vec<String> = (0..40).map(|i| format!("u{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let g = mem.put_group("g_big", "Big", names[0], &names);
    let members: Vec<UserId> = names.iter().map(|n| user(n)).collect();
    let c = ConversationId::group(g);
    let marks: Vec<_> = [3usize, 7, 8, 30]
        .iter()
        .map(|i| {
            let m = Markers {
                read: *i as u64,
                delivered: *i as u64 + 1,
                ts: 9,
            };
            (members[*i].clone(), c.clone(), m)
        })
        .collect();
    crate::ports::ReadMarkers::put(&*mem, &marks).await.unwrap();
    let q = |cursor: Option<&'static str>| {
        ReceiptsQuery::parse(&c.to_string(), move |n| match n {
            "limit" => Some("2"),
            "cursor" => cursor,
            _ => None,
        })
        .unwrap()
    };
    let first = receipts(&*mem, &*mem, &members[1], &q(None)).await.unwrap();
    let users: Vec<&str> = first.receipts.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(users, ["u03", "u07"]);
    assert_eq!(first.next.as_deref(), Some("u07"));
    let second = receipts(&*mem, &*mem, &members[1], &q(Some("u07")))
        .await
        .unwrap();
    let users: Vec<&str> = second.receipts.iter().map(|r| r.user.as_str()).collect();
    assert_eq!(users, ["u08", "u30"]);
    assert_eq!(
        (second.receipts[1].read, second.receipts[1].delivered),
        (30, 31)
    );
    let stranger = receipts(&*mem, &*mem, &user("zed"), &q(None)).await;
    assert_eq!(stranger.unwrap_err().code, ErrorCode::Forbidden);
}

#[tokio::test]
async fn a_busy_conversations_lagging_place_still_shows_its_newest_message_in_order() {
    let mem = Arc::new(Memory::default());
    // Places move at most once per second: bob's second message (1 ms later) leaves his place.
    let step = MessagingStep::new(mem.ports()).place_step_ms(1000);
    let sends = [(1000, "bob", "1"), (1001, "carol", "2"), (1002, "bob", "3")];
    for (ts, from, id) in sends {
        step.process(vec![sub(from, dm("alice", from), id)], ts)
            .await
            .unwrap();
    }
    let places = mem.listings.lock().unwrap()[&user("alice")].clone();
    assert_eq!(places[&dm("alice", "bob")].ts, 1000, "{places:?}");
    let p = page(&mem, "alice", 50, None).await;
    let shown: Vec<(&str, Option<u64>, u64)> = p
        .conversations
        .iter()
        .map(|i| {
            (
                i.conversation.as_str(),
                i.last.as_ref().map(|m| m.seq),
                i.unread,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [("dm:alice:bob", Some(2), 2), ("dm:alice:carol", Some(1), 1)],
        "the page in the order of its heads, each with its newest message"
    );
    // A message a step later moves the place.
    step.process(vec![sub("bob", dm("alice", "bob"), "4")], 2000)
        .await
        .unwrap();
    let places = mem.listings.lock().unwrap()[&user("bob")].clone();
    assert_eq!(places[&dm("alice", "bob")].seq, 3);
}
