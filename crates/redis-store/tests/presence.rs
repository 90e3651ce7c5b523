//! Presence on the running stack's Redis (`REDIS_URL`, as `make test` sets it): transitions
//! from the session registry, the debounce, a dead gateway's sessions expiring, views merged
//! over regions whatever the order the transitions come in, and the watch index.

use std::time::Duration;

use connect_core::model::{Session, SessionRoute};
use connect_core::ports::SessionRegistry;
use connect_core::presence::{PresenceChange, PresenceStore};
use connect_protocol::UserId;
use connect_redis::{PresenceConfig, RedisPresence, RedisRegistry};

/// The test process's settings.
fn settings() -> connect_config::Settings {
    connect_config::Settings::from_process()
}

/// A region of its own per test: its due checks are its own (the stack's messaging sweeps
/// region `local`'s).
async fn stack(ttl: Duration) -> (RedisRegistry, RedisPresence) {
    let cfg = connect_redis::RedisConfig::from_settings(&settings()).expect("Redis settings");
    let conn = connect_redis::connect(&cfg)
        .await
        .expect("the stack's Redis");
    (
        RedisRegistry::new(conn.clone(), ttl),
        RedisPresence::new(
            conn,
            PresenceConfig {
                region: format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
                debounce: Duration::from_millis(300),
                retain: Duration::from_secs(60),
            },
        ),
    )
}

fn fresh(name: &str) -> UserId {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..10];
    UserId::parse(format!("{name}_{run}")).unwrap()
}

fn session(user: &UserId, conn: &str) -> Session {
    Session {
        user: user.clone(),
        route: SessionRoute {
            conn: conn.into(),
            slot: 0,
            gateway: "gw".into(),
            endpoint: "http://127.0.0.1:1".into(),
            device: Some("d".into()),
        },
    }
}

/// Sweeps until `user`'s check has run (other tests' users may be due too).
async fn sweep_for(p: &RedisPresence, user: &UserId, now: u64) -> Vec<PresenceChange> {
    let mine: Vec<PresenceChange> = p
        .sweep(now, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.user == *user)
        .collect();
    mine
}

#[tokio::test]
async fn first_connection_online_last_close_offline_after_the_debounce_and_no_flap() {
    let ttl = Duration::from_secs(60);
    let (registry, p) = stack(ttl).await;
    let bob = fresh("bob");
    let now = connect_core::now_ms();
    registry.upsert(&[session(&bob, "c1")]).await.unwrap();
    let up = p
        .present(std::slice::from_ref(&bob), now, now + 60_000)
        .await
        .unwrap();
    assert_eq!(up.len(), 1, "the first connection turns bob online");
    assert!(up[0].online && up[0].v >= now);
    // A second connection, and a refresh, change nothing.
    registry.upsert(&[session(&bob, "c2")]).await.unwrap();
    assert!(p
        .present(std::slice::from_ref(&bob), now, now + 60_000)
        .await
        .unwrap()
        .is_empty());

    // One of two closes: still online, nothing scheduled early.
    registry
        .remove(&[(bob.clone(), "c1".into())])
        .await
        .unwrap();
    p.closed(std::slice::from_ref(&bob), now + 10)
        .await
        .unwrap();
    assert!(sweep_for(&p, &bob, now + 1_000).await.is_empty());

    // The last closes, and a new one opens within the debounce: never offline.
    registry
        .remove(&[(bob.clone(), "c2".into())])
        .await
        .unwrap();
    p.closed(std::slice::from_ref(&bob), now + 20)
        .await
        .unwrap();
    registry.upsert(&[session(&bob, "c3")]).await.unwrap();
    assert!(p
        .present(std::slice::from_ref(&bob), now + 100, now + 60_000)
        .await
        .unwrap()
        .is_empty());
    assert!(sweep_for(&p, &bob, now + 400).await.is_empty(), "no flap");

    // The last closes for good: offline once the debounce has passed, last seen at the close.
    registry
        .remove(&[(bob.clone(), "c3".into())])
        .await
        .unwrap();
    let closed_at = connect_core::now_ms();
    p.closed(std::slice::from_ref(&bob), closed_at)
        .await
        .unwrap();
    assert!(
        sweep_for(&p, &bob, closed_at + 100).await.is_empty(),
        "within the debounce"
    );
    let down = sweep_for(&p, &bob, closed_at + 300).await;
    assert_eq!(down.len(), 1);
    assert!(!down[0].online);
    assert_eq!(down[0].last_seen, Some(closed_at));
    assert!(down[0].v > up[0].v);
    assert!(
        sweep_for(&p, &bob, closed_at + 1_000).await.is_empty(),
        "once"
    );
}

#[tokio::test]
async fn a_dead_gateways_users_go_offline_when_their_sessions_expire() {
    let ttl = Duration::from_millis(400);
    let (registry, p) = stack(ttl).await;
    let carol = fresh("carol");
    let now = connect_core::now_ms();
    registry.upsert(&[session(&carol, "c1")]).await.unwrap();
    let expires = now + 400;
    assert_eq!(
        p.present(std::slice::from_ref(&carol), now, expires)
            .await
            .unwrap()
            .len(),
        1
    );
    // Nobody closes anything (SIGKILL). Before the expiry she is online; a check then finds
    // her live session and waits for it.
    assert!(sweep_for(&p, &carol, now + 100).await.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let down = sweep_for(&p, &carol, connect_core::now_ms()).await;
    assert_eq!(down.len(), 1, "offline once the session expired");
    assert!(!down[0].online);
    let seen = down[0].last_seen.unwrap();
    assert!(
        seen >= now.saturating_sub(50) && seen <= now + 50,
        "last seen at her last refresh: {seen} vs {now}"
    );
}

#[tokio::test]
async fn views_merge_regions_whatever_the_order_and_reach_the_watching_slots() {
    let (_, p) = stack(Duration::from_secs(60)).await;
    let dave = fresh("dave");
    let now = connect_core::now_ms();
    let change = |region: &str, v: u64, online: bool, seen: Option<u64>| PresenceChange {
        user: dave.clone(),
        region: region.into(),
        v,
        online,
        last_seen: seen,
    };
    // Never seen: offline without last_seen. Slot 3 watches until later, slot 4 expired.
    let views = p
        .views(std::slice::from_ref(&dave), Some((3, now + 60_000)))
        .await
        .unwrap();
    assert!(!views[0].online && views[0].last_seen.is_none());
    p.views(std::slice::from_ref(&dave), Some((4, now - 1)))
        .await
        .unwrap();

    let got = p.apply(&[change("b", 10, true, None)], now).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].view.online);
    assert_eq!(got[0].slots, vec![3], "only the live watcher");
    let v1 = got[0].view.version;
    // Region a goes online too: the view does not change.
    assert!(p
        .apply(&[change("a", 5, true, None)], now)
        .await
        .unwrap()
        .is_empty());
    // Region b's offline comes after an older one of its own that arrives late: ignored.
    assert!(
        p.apply(&[change("b", 11, false, Some(now))], now)
            .await
            .unwrap()
            .is_empty(),
        "a still online"
    );
    assert!(
        p.apply(&[change("b", 9, true, None)], now)
            .await
            .unwrap()
            .is_empty(),
        "older than 11"
    );
    // Region a offline: the view goes offline, last seen the latest of both.
    let got = p
        .apply(&[change("a", 6, false, Some(now - 5))], now)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(!got[0].view.online);
    assert_eq!(got[0].view.last_seen, Some(now));
    assert!(got[0].view.version > v1);
    // A repeat of the same transition changes nothing.
    assert!(p
        .apply(&[change("a", 6, false, Some(now - 5))], now)
        .await
        .unwrap()
        .is_empty());

    // The view as read, and after the watcher leaves nobody is told.
    let view = p.views(std::slice::from_ref(&dave), None).await.unwrap()[0];
    assert_eq!(view, got[0].view);
    p.unwatch(std::slice::from_ref(&dave), 3).await.unwrap();
    let got = p.apply(&[change("a", 7, true, None)], now).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].slots.is_empty());
}
