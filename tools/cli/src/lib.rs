//! `connect`, the command-line client, as a library: its connections ([`client`], shared with
//! the load, benchmark and fault tools) and what a chat in a terminal reads and prints
//! ([`chat`]).

pub mod chat;
pub mod client;
