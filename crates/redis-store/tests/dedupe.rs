//! The dedupe index on the running stack's Redis (`REDIS_URL`, as `make test` sets it): each
//! sender keeps its newest ids only, with a TTL from its last send.

use std::time::Duration;

use connect_core::model::{Acceptance, DedupeKey};
use connect_core::ports::DedupeIndex;
use connect_protocol::{ClientMsgId, ConversationId, UserId};

/// The test process's settings.
fn settings() -> connect_config::Settings {
    connect_config::Settings::from_process()
}

fn key(sender: &UserId, i: usize) -> DedupeKey {
    DedupeKey {
        sender: sender.clone(),
        id: ClientMsgId::parse(format!("m-{i}")).unwrap(),
    }
}

fn accepted(seq: u64) -> Acceptance {
    Acceptance {
        conversation: ConversationId::parse("dm:a:b").unwrap(),
        seq,
        ts: 1_763_800_000_000 + seq,
        mv: None,
    }
}

/// The stack's Redis, a dedupe index over it (60 s, 100 per sender) and a run id.
async fn dedupe() -> (connect_redis::RedisConn, connect_redis::RedisDedupe, String) {
    let cfg = connect_redis::RedisConfig::from_settings(&settings()).expect("Redis settings");
    let conn = connect_redis::connect(&cfg)
        .await
        .expect("the stack's Redis");
    let dedupe = connect_redis::RedisDedupe::new(conn.clone(), Duration::from_secs(60), 100);
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    (conn, dedupe, run)
}

#[tokio::test]
async fn a_sender_keeps_its_newest_ids_and_they_expire_after_its_last_send() {
    let (conn, dedupe, run) = dedupe().await;
    let run = run.as_str();
    let (alice, bob) = (
        UserId::parse(format!("alice_{run}")).unwrap(),
        UserId::parse(format!("bob_{run}")).unwrap(),
    );
    // 130 sends of alice's in batches of 40 (one pipeline each), one of bob's.
    let sends: Vec<(DedupeKey, Acceptance)> = (0..130)
        .map(|i| (key(&alice, i), accepted(i as u64 + 1)))
        .collect();
    for chunk in sends.chunks(40) {
        dedupe.remember(chunk).await.unwrap();
    }
    dedupe
        .remember(&[(key(&bob, 0), accepted(1))])
        .await
        .unwrap();
    // Remembering an id again changes nothing of the bound.
    assert_eq!(
        dedupe.remember(&sends[129..]).await.unwrap(),
        vec![None],
        "the same acceptance again is no conflict"
    );
    // Another acceptance of a remembered id (a second owner of the partition, racing) never
    // replaces the first: the first is returned and stands.
    assert_eq!(
        dedupe
            .remember(&[(key(&alice, 129), accepted(999))])
            .await
            .unwrap(),
        vec![Some(accepted(130))]
    );

    let asked: Vec<DedupeKey> = (0..130).map(|i| key(&alice, i)).collect();
    let found = dedupe.get(&asked).await.unwrap();
    let kept: Vec<usize> = (0..130).filter(|&i| found[i].is_some()).collect();
    assert_eq!(
        kept,
        (30..130).collect::<Vec<_>>(),
        "the newest 100 are kept"
    );
    assert_eq!(found[129], Some(accepted(130)));
    assert_eq!(
        dedupe.get(&[key(&bob, 0)]).await.unwrap(),
        vec![Some(accepted(1))],
        "another sender's bound is its own"
    );

    // Both keys expire with the TTL, and hold exactly the bound.
    let mut c = match conn {
        connect_redis::RedisConn::Single(c) => c,
        _ => return, // a cluster: the counts below are per node
    };
    let hash = format!("dedupe:{{{alice}}}");
    let order = format!("{hash}:order");
    let (fields, ids, ttl_hash, ttl_order): (usize, usize, i64, i64) = redis::pipe()
        .hlen(&hash)
        .llen(&order)
        .ttl(&hash)
        .ttl(&order)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((fields, ids), (100, 100));
    assert!((1..=60).contains(&ttl_hash) && (1..=60).contains(&ttl_order));
}

/// Scripts go by their SHA1; a server without them (restarted, failed over: here its script
/// cache flushed) gets them loaded and the calls run again, with nothing lost or run twice.
#[tokio::test]
async fn a_server_that_lost_its_scripts_gets_them_again() {
    let (conn, dedupe, run) = dedupe().await;
    let run = run.as_str();
    let carol = UserId::parse(format!("carol_{run}")).unwrap();
    dedupe
        .remember(&[(key(&carol, 0), accepted(1))])
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    let before = dedupe
        .remember(&[(key(&carol, 0), accepted(5)), (key(&carol, 1), accepted(2))])
        .await
        .unwrap();
    assert_eq!(before, vec![Some(accepted(1)), None]);
    assert_eq!(
        dedupe.get(&[key(&carol, 0), key(&carol, 1)]).await.unwrap(),
        vec![Some(accepted(1)), Some(accepted(2))]
    );
}

/// `forget` drops an id only while it holds the acceptance named (one whose seq was found
/// taken), from both keys; an id remembered since with another acceptance stays.
#[tokio::test]
async fn forget_drops_only_the_acceptance_named() {
    let (conn, dedupe, run) = dedupe().await;
    let dave = UserId::parse(format!("dave_{run}")).unwrap();
    let entries: Vec<_> = (0..3)
        .map(|i| (key(&dave, i), accepted(i as u64 + 1)))
        .collect();
    dedupe.remember(&entries).await.unwrap();
    dedupe
        .forget(&[(key(&dave, 0), accepted(1)), (key(&dave, 1), accepted(99))])
        .await
        .unwrap();
    assert_eq!(
        dedupe
            .get(&[key(&dave, 0), key(&dave, 1), key(&dave, 2)])
            .await
            .unwrap(),
        vec![None, Some(accepted(2)), Some(accepted(3))]
    );
    // Remembered anew, it is a new id again.
    assert_eq!(
        dedupe
            .remember(&[(key(&dave, 0), accepted(7))])
            .await
            .unwrap(),
        vec![None]
    );
    if let connect_redis::RedisConn::Single(mut c) = conn {
        let order: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("dedupe:{{{dave}}}:order"))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(
            order,
            vec!["m-1", "m-2", "m-0"],
            "the order lists each id once"
        );
    }
}
