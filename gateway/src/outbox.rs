//! A connection's outbound queue, bounded twice: in frames (`GATEWAY_OUTBOUND_QUEUE`, the
//! channel) and in bytes (`GATEWAY_OUTBOUND_QUEUE_BYTES`). What is counted is what waits in the
//! queue; the connection's task takes frames out a batch at a time ([`Inbox::recv_batch`], at
//! most [`BATCH_BYTES`]) and writes them under a write timeout, so a peer that stops reading
//! holds at most the queue plus one batch.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::hub::Out;

/// The most a connection's task takes out of its queue for one write.
pub const BATCH_BYTES: usize = 64 * 1024;

struct Shared {
    /// Bytes in the queue now.
    queued: AtomicUsize,
    max_bytes: usize,
    /// Woken whenever the task takes frames out (paced posts wait on it).
    room: Notify,
    /// Set (and `on_evict` woken) when the hub drops the connection as a slow consumer: a
    /// write stuck on a peer that stopped reading ends then, not at the write timeout.
    evicted: AtomicBool,
    on_evict: Notify,
}

/// The sending side (the hub's; cloned by paced posts).
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Out>,
    shared: Arc<Shared>,
}

/// The connection task's side.
pub struct Inbox {
    rx: mpsc::Receiver<Out>,
    shared: Arc<Shared>,
}

/// Why [`Outbox::try_send`] did not queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the frame or the byte bound: the connection is a slow consumer.
    Full(Out),
    /// The connection's task is gone.
    Closed,
}

/// A queue holding at most `frames` frames and `max_bytes` bytes (a single frame larger than
/// `max_bytes` is still taken when the queue is empty, so no frame is undeliverable).
pub fn outbox(frames: usize, max_bytes: usize) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(frames.max(1));
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        max_bytes,
        room: Notify::new(),
        evicted: AtomicBool::new(false),
        on_evict: Notify::new(),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        Inbox { rx, shared },
    )
}

impl Out {
    /// The bytes this puts on the wire.
    pub fn bytes(&self) -> usize {
        match self {
            Out::Frame(f) | Out::Posted(f) | Out::Signal { frame: f, .. } => f.len(),
            Out::Message(held) => held.frame.len(),
            Out::Close | Out::CaughtUp => 0,
        }
    }
}

impl Outbox {
    /// Queues `out` if both bounds allow it.
    pub fn try_send(&self, out: Out) -> Result<(), Refused> {
        if self.tx.is_closed() {
            return Err(Refused::Closed);
        }
        let bytes = out.bytes();
        let before = self.shared.queued.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > self.shared.max_bytes {
            self.shared.queued.fetch_sub(bytes, Ordering::AcqRel);
            return Err(Refused::Full(out));
        }
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.queued.fetch_sub(bytes, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(out) => Err(Refused::Full(out)),
                    mpsc::error::TrySendError::Closed(_) => Err(Refused::Closed),
                }
            }
        }
    }

    /// Queues `out`, waiting up to `wait` for room; `Full` (with `out` back) if the queue stayed
    /// full that long.
    pub async fn send_timeout(&self, mut out: Out, wait: Duration) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before the check: a frame taken out meanwhile still wakes us.
            room.as_mut().enable();
            match self.try_send(out) {
                Err(Refused::Full(back)) => out = back,
                done => return done,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Refused::Full(out));
            }
        }
    }

    /// Tells the connection's task it is evicted (see [`Evicted`]).
    pub fn evict(&self) {
        self.shared.evicted.store(true, Ordering::Release);
        self.shared.on_evict.notify_waiters();
    }

    /// Bytes waiting in the queue.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }
}

/// Resolves once the connection is evicted.
#[derive(Clone)]
pub struct Evicted(Arc<Shared>);

impl Evicted {
    pub async fn wait(&self) {
        loop {
            let woken = self.0.on_evict.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.0.evicted.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }
}

impl Inbox {
    /// What a write waits on beside the socket.
    pub fn evicted(&self) -> Evicted {
        Evicted(self.shared.clone())
    }

    fn taken(&self, out: &Out) {
        self.shared.queued.fetch_sub(out.bytes(), Ordering::AcqRel);
    }

    /// The next queued item; `None` once every sender is gone (the hub evicted the connection).
    pub async fn recv(&mut self) -> Option<Out> {
        let out = self.rx.recv().await?;
        self.taken(&out);
        self.shared.room.notify_waiters();
        Some(out)
    }

    /// `first` and whatever else is queued, up to [`BATCH_BYTES`] (or until `stop` says so).
    pub fn batch(&mut self, first: Out, mut stop: impl FnMut(&Out) -> bool) -> Vec<Out> {
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while bytes < BATCH_BYTES && !batch.last().is_some_and(&mut stop) {
            let Ok(out) = self.rx.try_recv() else { break };
            self.taken(&out);
            bytes += out.bytes();
            batch.push(out);
        }
        if batch.len() > 1 {
            self.shared.room.notify_waiters();
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Out {
        Out::Frame("x".repeat(n).into())
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_in_frames() {
        let (tx, mut rx) = outbox(3, 100);
        assert_eq!(tx.try_send(frame(60)), Ok(()));
        assert!(matches!(tx.try_send(frame(50)), Err(Refused::Full(_))));
        assert_eq!(tx.try_send(frame(40)), Ok(()));
        assert_eq!(tx.queued_bytes(), 100);
        assert_eq!(rx.recv().await, Some(frame(60)));
        assert_eq!(tx.queued_bytes(), 40);
        assert_eq!(tx.try_send(frame(0)), Ok(()));
        assert_eq!(tx.try_send(frame(0)), Ok(()));
        // Three frames queued: the frame bound refuses a fourth, however small.
        assert!(matches!(tx.try_send(frame(0)), Err(Refused::Full(_))));
        assert_eq!(tx.queued_bytes(), 40);
        // A frame larger than the whole bound still goes through an empty queue.
        let first = rx.recv().await.unwrap();
        let batch = rx.batch(first, |_| false);
        assert_eq!(batch.len(), 3);
        assert_eq!(tx.queued_bytes(), 0);
        assert_eq!(tx.try_send(frame(500)), Ok(()));
        drop(rx);
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn eviction_wakes_a_waiting_writer() {
        let (tx, rx) = outbox(1, 1);
        let evicted = rx.evicted();
        let waiting = tokio::spawn(async move { evicted.wait().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        tx.evict();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        // Evicted before anyone waits: the wait ends at once.
        rx.evicted().wait().await;
    }

    #[tokio::test]
    async fn a_paced_send_waits_for_room_then_gives_up() {
        let (tx, mut rx) = outbox(8, 100);
        tx.try_send(frame(100)).unwrap();
        let paced = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send_timeout(frame(10), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!paced.is_finished());
        rx.recv().await.unwrap();
        assert!(paced.await.unwrap().is_ok());
        assert!(
            matches!(
                tx.send_timeout(frame(100), Duration::from_millis(50)).await,
                Err(Refused::Full(_))
            ),
            "still full after the wait"
        );
        drop(rx);
        assert_eq!(
            tx.send_timeout(frame(10), Duration::from_millis(50)).await,
            Err(Refused::Closed)
        );
    }

    #[tokio::test]
    async fn a_batch_stops_at_the_byte_budget() {
        let (tx, mut rx) = outbox(100, usize::MAX);
        for _ in 0..10 {
            tx.try_send(frame(BATCH_BYTES / 4)).unwrap();
        }
        let first = rx.recv().await.unwrap();
        assert_eq!(rx.batch(first, |_| false).len(), 4);
        let first = rx.recv().await.unwrap();
        assert_eq!(rx.batch(first, |o| o.bytes() > 0).len(), 1);
    }
}
