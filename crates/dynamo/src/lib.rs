//! DynamoDB adapter (`aws-sdk-dynamodb`).
//!
//! # Layout
//! - [`client`]: builds the SDK client once (endpoint override + static credentials for
//!   DynamoDB Local).
//! - [`chat`]: [`DynamoChatStore`], the chat table (`conversation` + `seq`).
//! - [`sequences`]: [`DynamoSequences`], the sequence table: one atomic `ADD n` per conversation,
//!   guarded by the conversation's home region.
//! - [`schema`]: table definitions and [`schema::ensure_tables`].
//! - [`item`]: message ⇄ item mapping.

pub mod chat;
pub mod client;
pub mod item;
pub mod schema;
pub mod sequences;

pub use aws_sdk_dynamodb::Client;
pub use chat::DynamoChatStore;
pub use client::{client, DynamoConfig};
pub use schema::{ensure_tables, Tables};
pub use sequences::DynamoSequences;

use connect_core::PortError;

pub(crate) fn unavailable(e: impl std::fmt::Display) -> PortError {
    PortError::unavailable("dynamodb", e)
}
