//! At most one signal per key per interval to a connection (PROTOCOL: at most one `receipt` per
//! (user, conversation) per second): the first goes at once; later ones within the interval
//! wait, and when it ends only the latest of each key goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub struct Pacer {
    interval: Duration,
    /// When each key last went out (pruned once past the interval).
    sent: HashMap<Arc<str>, Instant>,
    /// The latest frame of each key that has to wait.
    waiting: HashMap<Arc<str>, Utf8Bytes>,
}

impl Pacer {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            sent: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// The frame to send now, if its key may go; otherwise it waits (replacing an earlier one of
    /// its key) until [`Pacer::due`].
    pub fn offer(&mut self, key: Arc<str>, frame: Utf8Bytes, now: Instant) -> Option<Utf8Bytes> {
        if self.sent.len() > 64 {
            let interval = self.interval;
            let waiting = &self.waiting;
            self.sent
                .retain(|k, at| now < *at + interval || waiting.contains_key(k));
        }
        match self.sent.get(&key) {
            Some(at) if now < *at + self.interval => {
                self.waiting.insert(key, frame);
                None
            }
            _ => {
                self.sent.insert(key, now);
                Some(frame)
            }
        }
    }

    /// When the first waiting frame may go.
    pub fn due(&self) -> Option<Instant> {
        self.waiting
            .keys()
            .filter_map(|k| self.sent.get(k))
            .min()
            .map(|at| *at + self.interval)
    }

    /// The waiting frames whose interval has ended, now marked sent.
    pub fn release(&mut self, now: Instant) -> Vec<Utf8Bytes> {
        let ready: Vec<Arc<str>> = self
            .waiting
            .keys()
            .filter(|k| {
                self.sent
                    .get(*k)
                    .is_none_or(|at| now >= *at + self.interval)
            })
            .cloned()
            .collect();
        ready
            .into_iter()
            .filter_map(|k| {
                let frame = self.waiting.remove(&k)?;
                self.sent.insert(k, now);
                Some(frame)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_sends_the_first_at_once_and_the_latest_after_the_interval() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut p = Pacer::new(second);
        let key: Arc<str> = "dm:a:b bob".into();
        let other: Arc<str> = "dm:a:c carol".into();
        assert_eq!(
            p.offer(key.clone(), "r1".into(), start).as_deref(),
            Some("r1")
        );
        assert_eq!(p.due(), None);
        let ms = |n| start + Duration::from_millis(n);
        assert_eq!(p.offer(key.clone(), "r2".into(), ms(100)), None);
        assert_eq!(p.offer(key.clone(), "r3".into(), ms(200)), None);
        // Another key is not held back by the first.
        assert_eq!(
            p.offer(other.clone(), "c1".into(), ms(300)).as_deref(),
            Some("c1")
        );
        assert_eq!(p.due(), Some(start + second));
        assert!(p.release(ms(999)).is_empty());
        let out = p.release(start + second);
        assert_eq!(out.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["r3"]);
        assert_eq!(p.due(), None);
        // The released one counts as sent: the next within a second waits again.
        assert_eq!(p.offer(key, "r4".into(), ms(1500)), None);
        assert_eq!(p.due(), Some(start + second + second));
    }
}
