//! The core of Connect Chat: domain types, ports and use-cases. No backend code lives here —
//! adapters (`connect-kafka`, `connect-redis`, `connect-dynamo`) implement the ports, binaries
//! wire them.
//!
//! # Layout
//! - [`auth`]: HS256 JWT verification (and minting, for dev tools and tests).
//! - [`env`]: env-var reading shared by every binary and adapter config.
//! - [`model`]: what travels between the parts — [`model::Submission`] (gateway → messaging),
//!   [`model::StoredMessage`], [`model::Delivery`] (messaging → one gateway), session routes.
//! - [`ports`]: the traits the adapters implement, one line each, gathered in [`ports::Ports`].
//! - [`messaging`]: the messaging step — dedupe, authorize, sequence, persist, route.
//! - [`inbound`]: what a gateway does with one client frame (pure).
//! - [`offline`]: pushing a device's backlog (conversation logs above its cursors) to a new connection.
//! - [`history`]: the history read: parameters, authorization, one page.
//! - [`inbox`]: the inbox (a user's conversations, newest first, with unread counts) and the
//!   receipts of a conversation.
//! - [`groups`]: group administration and its rules, group changes as system messages,
//!   messaging's membership cache.
//! - [`sequencer`]: batched seq allocation (the sequencer function).
//! - [`seqblocks`]: messaging's seq blocks: busy conversations reserve ahead, one atomic add
//!   per block.
//! - [`presence`]: who is online (transitions from the session registry, views merged over
//!   regions, the watch index) and who may watch whom.
//! - [`push`]: push registrations (their checks) and the payload a push carries.
//! - [`regions`]: active-active regions: forwarding to a conversation's home, the records
//!   replicated between regions, acks for the other regions' cursors.
//! - [`error`]: [`PortError`], retryable or final; [`ApiError`], an HTTP answer with a contract code.
//! - `memory`: in-memory ports for unit tests of the pure logic (tests and the `memory` feature only).

pub mod auth;
pub mod error;
pub mod faults;
pub mod groups;
pub mod history;
pub mod inbound;
pub mod inbox;
/// In-memory ports for unit tests (this crate's, and others' with the `memory` feature); not
/// in production builds.
#[cfg(any(test, feature = "memory"))]
pub mod memory;
pub mod messaging;
pub mod model;
pub mod offline;
pub mod ports;
pub mod presence;
pub mod push;
pub mod quota;
pub mod regions;
pub mod seqblocks;
pub mod sequencer;

pub use error::{ApiError, PortError};

/// Milliseconds since the epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
