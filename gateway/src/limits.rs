//! What one user or one address may take of a gateway: connections (per user, per source
//! address; the gateway-wide cap is a semaphore in [`crate::state::Gateway`]) and inbound frame
//! rates (per connection and per user, for sends and for every frame of any type).
//!
//! Per user means per user on this gateway: a user spread over several gateways gets each one's
//! allowance (bounded by `GATEWAY_MAX_CONNECTIONS_PER_USER` times the gateways).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use connect_protocol::UserId;

use crate::rate::TokenBucket;

/// A token bucket's settings: `rate` a second, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub rate: f64,
    pub burst: f64,
}

impl Rate {
    pub(crate) fn bucket(self, now: Instant) -> TokenBucket {
        TokenBucket::new(self.rate, self.burst, now)
    }
}

/// The limits, from config.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `GATEWAY_MAX_CONNECTIONS_PER_USER`.
    pub connections_per_user: usize,
    /// `GATEWAY_MAX_CONNECTIONS_PER_ADDRESS`.
    pub connections_per_address: usize,
    /// `GATEWAY_SEND_RATE` / `GATEWAY_SEND_BURST`: `send` frames of one connection.
    pub send: Rate,
    /// `GATEWAY_FRAME_RATE` / `GATEWAY_FRAME_BURST`: frames of any type (sends, acks, bad
    /// frames, pings) of one connection.
    pub frames: Rate,
    /// `GATEWAY_USER_SEND_RATE` / `GATEWAY_USER_SEND_BURST`: `send` frames of all of a user's
    /// connections here.
    pub user_send: Rate,
    /// `GATEWAY_USER_FRAME_RATE` / `GATEWAY_USER_FRAME_BURST`: frames of any type of all of a
    /// user's connections here.
    pub user_frames: Rate,
}

/// A send and a frame bucket.
#[derive(Debug)]
struct Buckets {
    send: TokenBucket,
    frames: TokenBucket,
}

impl Buckets {
    fn new(send: Rate, frames: Rate, now: Instant) -> Self {
        Self {
            send: send.bucket(now),
            frames: frames.bucket(now),
        }
    }

    fn take(&mut self, is_send: bool, now: Instant) -> bool {
        // The frame bucket first: a frame over it is refused before it costs a send token.
        self.frames.try_take(now) && (!is_send || self.send.try_take(now))
    }
}

struct UserEntry {
    connections: usize,
    buckets: Arc<Mutex<Buckets>>,
}

#[derive(Default)]
struct Counts {
    users: HashMap<UserId, UserEntry>,
    addresses: HashMap<IpAddr, usize>,
}

/// Counts connections by user and by address, and holds each connected user's rate buckets.
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this user already has {0} connections to this gateway")]
    User(usize),
    #[error("this address already has {0} connections to this gateway")]
    Address(usize),
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more connection of `user` from `address`, if both are under their caps; it
    /// is counted until the returned [`Admitted`] is dropped.
    pub fn admit(self: &Arc<Self>, user: &UserId, address: IpAddr) -> Result<Admitted, Refused> {
        let now = Instant::now();
        let mut counts = self.counts();
        let from_address = counts.addresses.get(&address).copied().unwrap_or(0);
        if from_address >= self.limits.connections_per_address {
            return Err(Refused::Address(from_address));
        }
        let of_user = counts.users.get(user).map_or(0, |u| u.connections);
        if of_user >= self.limits.connections_per_user {
            return Err(Refused::User(of_user));
        }
        *counts.addresses.entry(address).or_default() += 1;
        let entry = counts
            .users
            .entry(user.clone())
            .or_insert_with(|| UserEntry {
                connections: 0,
                buckets: Arc::new(Mutex::new(Buckets::new(
                    self.limits.user_send,
                    self.limits.user_frames,
                    now,
                ))),
            });
        entry.connections += 1;
        Ok(Admitted {
            admission: self.clone(),
            user: user.clone(),
            address,
            rates: Rates {
                own: Buckets::new(self.limits.send, self.limits.frames, now),
                user: entry.buckets.clone(),
            },
        })
    }

    fn release(&self, user: &UserId, address: IpAddr) {
        let mut counts = self.counts();
        if let Some(n) = counts.addresses.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                counts.addresses.remove(&address);
            }
        }
        if let Some(entry) = counts.users.get_mut(user) {
            entry.connections -= 1;
            if entry.connections == 0 {
                counts.users.remove(user);
            }
        }
    }
}

/// One admitted connection: counted until dropped; carries its rate limits.
pub struct Admitted {
    admission: Arc<Admission>,
    user: UserId,
    address: IpAddr,
    pub rates: Rates,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.release(&self.user, self.address);
    }
}

/// A connection's rate limits: its own buckets and its user's.
pub struct Rates {
    own: Buckets,
    user: Arc<Mutex<Buckets>>,
}

/// Which limit refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Connection,
    User,
}

impl Rates {
    /// Takes a frame (a `send` when `is_send`) from the connection's and the user's buckets.
    pub fn take(&mut self, is_send: bool, now: Instant) -> Result<(), Limited> {
        if !self.own.take(is_send, now) {
            return Err(Limited::Connection);
        }
        let mut user = self.user.lock().unwrap_or_else(|p| p.into_inner());
        if !user.take(is_send, now) {
            return Err(Limited::User);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            connections_per_user: 2,
            connections_per_address: 3,
            send: Rate {
                rate: 1.0,
                burst: 2.0,
            },
            frames: Rate {
                rate: 1.0,
                burst: 4.0,
            },
            user_send: Rate {
                rate: 1.0,
                burst: 3.0,
            },
            user_frames: Rate {
                rate: 1.0,
                burst: 100.0,
            },
        }
    }

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn connections_are_capped_per_user_and_per_address_until_released() {
        let admission = Arc::new(Admission::new(limits()));
        let (a, b) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let alice1 = admission.admit(&user("alice"), a).unwrap();
        let _alice2 = admission.admit(&user("alice"), b).unwrap();
        assert_eq!(
            admission.admit(&user("alice"), b).err(),
            Some(Refused::User(2))
        );
        let _bob1 = admission.admit(&user("bob"), a).unwrap();
        let _carol = admission.admit(&user("carol"), a).unwrap();
        assert_eq!(
            admission.admit(&user("dave"), a).err(),
            Some(Refused::Address(3))
        );
        assert!(admission.admit(&user("dave"), b).is_ok());
        drop(alice1);
        assert!(admission.admit(&user("dave"), a).is_ok());
        assert!(admission.admit(&user("alice"), b).is_ok());
    }

    #[test]
    fn frames_are_limited_per_connection_and_per_user() {
        let admission = Arc::new(Admission::new(limits()));
        let now = Instant::now();
        let ip = "127.0.0.1".parse().unwrap();
        let mut one = admission.admit(&user("alice"), ip).unwrap();
        let mut two = admission.admit(&user("alice"), ip).unwrap();
        // The connection's send burst (2), then its own limit.
        assert_eq!(one.rates.take(true, now), Ok(()));
        assert_eq!(one.rates.take(true, now), Ok(()));
        assert_eq!(one.rates.take(true, now), Err(Limited::Connection));
        // The user's send burst (3) is shared: the other connection gets one more.
        assert_eq!(two.rates.take(true, now), Ok(()));
        assert_eq!(two.rates.take(true, now), Err(Limited::User));
        // Other frames: the connection's frame burst (4) counts sends too (3 taken by one).
        assert_eq!(one.rates.take(false, now), Ok(()));
        assert_eq!(one.rates.take(false, now), Err(Limited::Connection));
        // Refilled a second later.
        let later = now + Duration::from_secs(1);
        assert_eq!(one.rates.take(true, later), Ok(()));
    }
}
