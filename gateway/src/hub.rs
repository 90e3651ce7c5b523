//! The gateway's local connections: user → connections, connection → outbound queue.
//!
//! Delivery never blocks: each connection has a queue bounded in frames and bytes
//! (`GATEWAY_OUTBOUND_QUEUE`, `GATEWAY_OUTBOUND_QUEUE_BYTES`); a connection whose queue is full is a slow consumer and is evicted (its queue closes, its task
//! closes the socket). Nothing is lost by that: what its device did not ack comes again on its
//! next connection, from the conversations' logs (and history holds every accepted message).
//! Management API posts (a device's backlog) wait for room instead: the backlog is paced by the
//! connection it is for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_tungstenite::tungstenite::Utf8Bytes;

use connect_core::model::Delivery;
use connect_protocol::UserId;

/// What became of a management API post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    Queued,
    /// The connection's queue stayed full for the wait: post again later.
    Busy,
    /// No such connection here.
    Gone,
}

/// What a connection's task is handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// A frame that needs no ack (`accepted`, `error`, a management API post).
    Frame(Utf8Bytes),
    /// A live `message` frame with its (conversation, seq): held back while the backlog comes. Boxed
    /// so the variants stay small: every connection's queue allocates a block of 32 slots up
    /// front, and that block is part of what an idle connection costs.
    Message(Box<Held>),
    /// Data posted through the management API (a device's backlog): a `message` frame among
    /// them is dropped if the connection already had its (conversation, seq).
    Posted(Utf8Bytes),
    /// Close the connection (management API `DELETE /@connections/{id}`).
    Close,
    /// The connection's backlog has been posted: live messages held meanwhile go out now.
    CaughtUp,
    /// A `receipt`: sent at once, or (another with the same key went out less than a second
    /// ago) coalesced into the latest of its key; never held back or delivered later.
    Signal { key: Arc<str>, frame: Utf8Bytes },
}

/// A `message` frame with the (conversation, seq) its ack names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub frame: Utf8Bytes,
    pub conversation: Arc<str>,
    pub seq: u64,
}

pub use crate::outbox::Outbox;
use crate::outbox::Refused;

/// What the management API's `GET /@connections/{id}` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub user: UserId,
    /// `?device=`, or the default device.
    pub device: Arc<str>,
    pub connected_at_ms: u64,
    pub source_ip: String,
    pub user_agent: String,
}

struct Entry {
    info: ConnInfo,
    outbox: Outbox,
    /// The users this connection watches.
    watching: Vec<UserId>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<Arc<str>, Entry>,
    users: HashMap<UserId, Vec<Arc<str>>>,
    /// Presence: watched user → the local connections watching them, each with the version
    /// of the last view it was given (a view never follows a newer one).
    watchers: HashMap<UserId, HashMap<Arc<str>, u64>>,
}

/// What one delivery did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handed {
    /// Frames queued to connections.
    pub frames: usize,
    /// Connections evicted as slow consumers.
    pub evicted: usize,
    /// Signals dropped for a full queue (they are never worth an eviction).
    pub dropped: usize,
    /// Recipients with no connection here any more (they left after the registry lookup).
    pub absent: Vec<UserId>,
}

#[derive(Default)]
pub struct Hub {
    inner: Mutex<Inner>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, info: ConnInfo, conn: Arc<str>, outbox: Outbox) {
        let mut inner = self.lock();
        inner
            .users
            .entry(info.user.clone())
            .or_default()
            .push(conn.clone());
        inner.conns.insert(
            conn,
            Entry {
                info,
                outbox,
                watching: Vec::new(),
            },
        );
    }

    pub fn info(&self, conn: &str) -> Option<ConnInfo> {
        self.lock().conns.get(conn).map(|e| e.info.clone())
    }

    /// Queues `out` to one connection. False if it is not here; a full queue evicts it (and
    /// answers false: what was posted did not reach it).
    pub fn post(&self, conn: &str, out: Out) -> bool {
        let mut inner = self.lock();
        let Some(entry) = inner.conns.get(conn) else {
            return false;
        };
        if entry.outbox.try_send(out).is_ok() {
            return true;
        }
        remove_locked(&mut inner, conn);
        false
    }

    /// Queues `out` to one connection, waiting up to `wait` for room. A queue that stays full
    /// answers [`Posted::Busy`] and keeps its connection (a reader that never catches up is cut
    /// off by the slow-consumer bounds, not by a backlog post).
    pub async fn post_paced(&self, conn: &str, out: Out, wait: std::time::Duration) -> Posted {
        let Some(outbox) = self.lock().conns.get(conn).map(|e| e.outbox.clone()) else {
            return Posted::Gone;
        };
        match outbox.send_timeout(out, wait).await {
            Ok(()) => Posted::Queued,
            Err(Refused::Full(_)) => Posted::Busy,
            Err(Refused::Closed) => {
                self.remove(conn);
                Posted::Gone
            }
        }
    }

    /// Forgets a connection; false if it was not here (already evicted).
    pub fn remove(&self, conn: &str) -> bool {
        let mut inner = self.lock();
        remove_locked(&mut inner, conn)
    }

    /// Every local (user, connection, device).
    pub fn sessions(&self) -> Vec<(UserId, Arc<str>, Arc<str>)> {
        self.lock()
            .conns
            .iter()
            .map(|(c, e)| (e.info.user.clone(), c.clone(), e.info.device.clone()))
            .collect()
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().conns.is_empty()
    }

    /// Replaces `conn`'s watch list. A user it keeps watching keeps the version it was given;
    /// a new one starts at none, so a change relayed from now on reaches it.
    pub fn watch(&self, conn: &str, users: &[UserId]) {
        let mut inner = self.lock();
        let Some(entry) = inner.conns.get_mut(conn) else {
            return;
        };
        let old = std::mem::replace(&mut entry.watching, users.to_vec());
        let key: Arc<str> = inner
            .conns
            .get_key_value(conn)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| conn.into());
        for u in old.iter().filter(|u| !users.contains(u)) {
            unwatch_locked(&mut inner, u, conn);
        }
        for u in users {
            inner
                .watchers
                .entry(u.clone())
                .or_default()
                .entry(key.clone())
                .or_insert(0);
        }
    }

    /// Whether `conn` is to be given `user`'s view at `version` as the answer to its `watch`:
    /// yes unless a newer view already went to it (then that one stands).
    pub fn answer(&self, conn: &str, user: &UserId, version: u64) -> bool {
        let mut inner = self.lock();
        match inner.watchers.get_mut(user).and_then(|w| w.get_mut(conn)) {
            Some(last) if *last <= version => {
                *last = version;
                true
            }
            _ => false,
        }
    }

    /// Every user some local connection watches.
    pub fn watched(&self) -> Vec<UserId> {
        self.lock().watchers.keys().cloned().collect()
    }

    /// Queues the delivery's frames to the local connections it names.
    pub fn deliver(&self, delivery: Delivery) -> Handed {
        let mut handed = Handed::default();
        let mut slow: Vec<Arc<str>> = Vec::new();
        let mut inner = self.lock();
        let skip = delivery.reply.as_ref().map(|r| r.conn.as_str());
        if let Some(message) = delivery.message {
            let frame = Utf8Bytes::from(message.frame);
            let conversation: Arc<str> = message.conversation.into();
            for user in &delivery.recipients {
                let Some(conns) = inner.users.get(user) else {
                    handed.absent.push(user.clone());
                    continue;
                };
                for conn in conns.iter().filter(|c| Some(&***c) != skip) {
                    let out = Out::Message(Box::new(Held {
                        frame: frame.clone(),
                        conversation: conversation.clone(),
                        seq: message.seq,
                    }));
                    match inner.conns[conn].outbox.try_send(out) {
                        Ok(()) => handed.frames += 1,
                        Err(_) => slow.push(conn.clone()),
                    }
                }
            }
        }
        if let Some(signal) = delivery.signal {
            let (key, frame): (Arc<str>, Utf8Bytes) = (signal.key.into(), signal.frame.into());
            let except = signal.except.as_deref();
            for user in &delivery.recipients {
                let Some(conns) = inner.users.get(user) else {
                    continue;
                };
                for conn in conns.iter().filter(|c| Some(&***c) != except) {
                    let out = Out::Signal {
                        key: key.clone(),
                        frame: frame.clone(),
                    };
                    match inner.conns[conn].outbox.try_send(out) {
                        Ok(()) => handed.frames += 1,
                        Err(_) => handed.dropped += 1,
                    }
                }
            }
        }
        if let Some(p) = delivery.presence {
            let key: Arc<str> = format!("presence {}", p.user).into();
            let frame = Utf8Bytes::from(p.frame);
            let Inner {
                conns, watchers, ..
            } = &mut *inner;
            for (conn, last) in watchers.get_mut(&p.user).into_iter().flatten() {
                if *last >= p.version {
                    continue;
                }
                *last = p.version;
                let out = Out::Signal {
                    key: key.clone(),
                    frame: frame.clone(),
                };
                match conns.get(conn).map(|e| e.outbox.try_send(out)) {
                    Some(Ok(())) => handed.frames += 1,
                    _ => handed.dropped += 1,
                }
            }
        }
        if let Some(reply) = delivery.reply {
            if let Some(entry) = inner.conns.get(reply.conn.as_str()) {
                match entry
                    .outbox
                    .try_send(Out::Frame(Utf8Bytes::from(reply.frame)))
                {
                    Ok(()) => handed.frames += 1,
                    Err(_) => slow.push(reply.conn.into()),
                }
            }
        }
        for conn in slow {
            if remove_locked(&mut inner, &conn) {
                handed.evicted += 1;
            }
        }
        handed
    }
}

fn unwatch_locked(inner: &mut Inner, user: &UserId, conn: &str) {
    if let Some(w) = inner.watchers.get_mut(user) {
        w.remove(conn);
        if w.is_empty() {
            inner.watchers.remove(user);
        }
    }
}

fn remove_locked(inner: &mut Inner, conn: &str) -> bool {
    let Some(entry) = inner.conns.remove(conn) else {
        return false;
    };
    entry.outbox.evict();
    for u in &entry.watching {
        unwatch_locked(inner, u, conn);
    }
    if let Some(conns) = inner.users.get_mut(&entry.info.user) {
        conns.retain(|c| &**c != conn);
        if conns.is_empty() {
            inner.users.remove(&entry.info.user);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{outbox, Inbox};
    use connect_core::model::{OutboundMessage, Reply};

    fn channel(frames: usize) -> (Outbox, Inbox) {
        outbox(frames, usize::MAX)
    }

    impl Inbox {
        fn try_recv(&mut self) -> Option<Out> {
            self.recv().now_or_never().flatten()
        }
    }
    use futures_util::FutureExt;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn info(u: &str) -> ConnInfo {
        ConnInfo {
            user: user(u),
            device: "d".into(),
            connected_at_ms: 0,
            source_ip: String::new(),
            user_agent: String::new(),
        }
    }

    fn text(out: Out) -> String {
        match out {
            Out::Frame(f) => f.to_string(),
            Out::Message(held) => held.frame.to_string(),
            Out::Posted(f) => f.to_string(),
            Out::Close => "close".into(),
            Out::CaughtUp => "caught_up".into(),
            Out::Signal { frame, .. } => frame.to_string(),
        }
    }

    fn delivery(to: &[&str], reply_conn: Option<&str>) -> Delivery {
        Delivery {
            slot: 0,
            recipients: to.iter().map(|u| user(u)).collect(),
            message: Some(OutboundMessage {
                conversation: "dm:a:b".into(),
                seq: 1,
                ts: 0,
                frame: "m".into(),
            }),
            reply: reply_conn.map(|c| Reply {
                conn: c.into(),
                frame: "r".into(),
            }),
            signal: None,
            presence: None,
        }
    }

    #[test]
    fn the_sending_connection_gets_the_reply_and_the_others_the_message() {
        let hub = Hub::default();
        let (tx1, mut rx1) = channel(4);
        let (tx2, mut rx2) = channel(4);
        let (tx3, mut rx3) = channel(4);
        hub.add(info("a"), "a1".into(), tx1);
        hub.add(info("a"), "a2".into(), tx2);
        hub.add(info("b"), "b1".into(), tx3);
        let handed = hub.deliver(delivery(&["a", "b", "nobody"], Some("a1")));
        assert_eq!(
            handed,
            Handed {
                frames: 3,
                evicted: 0,
                dropped: 0,
                absent: vec![user("nobody")],
            }
        );
        assert_eq!(text(rx1.try_recv().unwrap()), "r");
        assert!(rx1.try_recv().is_none());
        assert_eq!(
            rx2.try_recv().unwrap(),
            Out::Message(Box::new(Held {
                frame: "m".into(),
                conversation: "dm:a:b".into(),
                seq: 1
            }))
        );
        assert_eq!(text(rx3.try_recv().unwrap()), "m");
    }

    #[tokio::test]
    async fn a_full_queue_evicts_the_slow_connection() {
        let hub = Hub::default();
        let (tx, mut rx) = channel(1);
        hub.add(info("a"), "a1".into(), tx);
        assert_eq!(hub.deliver(delivery(&["a"], None)).frames, 1);
        assert_eq!(hub.deliver(delivery(&["a"], None)).evicted, 1);
        assert_eq!(hub.len(), 0);
        assert_eq!(text(rx.try_recv().unwrap()), "m");
        assert_eq!(rx.recv().await, None, "evicted: its queue is closed");
        assert!(!hub.remove("a1"));
    }

    #[test]
    fn a_signal_skips_its_origin_and_a_full_queue_drops_it_without_an_eviction() {
        let hub = Hub::default();
        let (tx1, mut rx1) = channel(4);
        let (tx2, mut rx2) = channel(1);
        let (tx3, mut rx3) = channel(4);
        hub.add(info("a"), "a1".into(), tx1);
        hub.add(info("a"), "a2".into(), tx2);
        hub.add(info("b"), "b1".into(), tx3);
        assert!(hub.post("a2", Out::Frame("filler".into())));
        let handed = hub.deliver(Delivery {
            slot: 0,
            recipients: vec![user("a"), user("b")],
            message: None,
            reply: None,
            signal: Some(connect_core::model::Signal {
                key: "dm:a:b a".into(),
                frame: "receipt".into(),
                except: Some("a1".into()),
            }),
            presence: None,
        });
        assert_eq!((handed.frames, handed.dropped, handed.evicted), (1, 1, 0));
        assert!(rx1.try_recv().is_none(), "the origin gets none");
        assert_eq!(text(rx2.try_recv().unwrap()), "filler");
        assert!(rx2.try_recv().is_none(), "dropped, not queued");
        assert!(matches!(rx3.try_recv(), Some(Out::Signal { key, .. }) if &*key == "dm:a:b a"));
        assert_eq!(hub.len(), 3, "nobody evicted");
    }

    fn change(version: u64, frame: &str) -> Delivery {
        Delivery {
            slot: 0,
            recipients: Vec::new(),
            message: None,
            reply: None,
            signal: None,
            presence: Some(connect_core::model::PresenceSignal {
                user: user("bob"),
                version,
                frame: frame.into(),
            }),
        }
    }

    #[test]
    fn a_change_reaches_the_watchers_only_and_never_an_older_view_after_a_newer() {
        let hub = Hub::default();
        let (tx1, mut rx1) = channel(8);
        let (tx2, mut rx2) = channel(8);
        hub.add(info("alice"), "a1".into(), tx1);
        hub.add(info("carol"), "c1".into(), tx2);
        hub.watch("a1", &[user("bob")]);
        // A change relayed while the watch is being answered goes out, and the (older) answer
        // then stands down; an equal one (the answer itself) would go.
        assert_eq!(hub.deliver(change(5, "online")).frames, 1);
        assert!(!hub.answer("a1", &user("bob"), 4));
        assert!(hub.answer("a1", &user("bob"), 5));
        // An older change than the last one sent is dropped; a newer one goes.
        assert_eq!(hub.deliver(change(3, "stale")).frames, 0);
        assert_eq!(hub.deliver(change(6, "offline")).frames, 1);
        let got: Vec<String> = std::iter::from_fn(|| rx1.try_recv())
            .map(|o| match o {
                Out::Signal { frame, .. } => frame.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ["online", "offline"]);
        assert!(rx2.try_recv().is_none(), "carol watches nobody");
        // No longer watched (a new list, or the connection gone): nothing more.
        hub.watch("a1", &[user("dave")]);
        assert_eq!(hub.deliver(change(7, "online")).frames, 0);
        assert_eq!(hub.watched(), vec![user("dave")]);
        hub.remove("a1");
        assert!(hub.watched().is_empty());
    }
}

#[cfg(test)]
mod post_tests {
    use super::*;

    #[test]
    fn a_post_reaches_a_known_connection_only() {
        let hub = Hub::default();
        let (tx, mut rx) = crate::outbox::outbox(1, usize::MAX);
        let info = ConnInfo {
            user: UserId::parse("a").unwrap(),
            device: "d".into(),
            connected_at_ms: 5,
            source_ip: "127.0.0.1".into(),
            user_agent: "t".into(),
        };
        hub.add(info.clone(), "a1".into(), tx);
        assert_eq!(hub.info("a1"), Some(info));
        assert!(hub.post("a1", Out::Frame("x".into())));
        assert!(!hub.post("nope", Out::Frame("x".into())));
        // The queue is full: the connection is evicted and the post did not land.
        assert!(!hub.post("a1", Out::Frame("y".into())));
        assert_eq!(hub.len(), 0);
        assert_eq!(
            futures_util::FutureExt::now_or_never(rx.recv()).flatten(),
            Some(Out::Frame("x".into()))
        );
    }
}
