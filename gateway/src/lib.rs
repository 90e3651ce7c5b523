//! Gateway Service: WebSocket connections, session registry, delivery from its own slot of
//! `outgoing_messages`. The library behind the `connect-gateway` binary and the harness of
//! `connect-bench gateway` (the gateway over the memory ports).
//!
//! # Layout
//! - `config`: [`config::Config`] from env vars.
//! - `app`: builds the parts and runs until stopped (graceful drain on SIGTERM).
//! - `server`: `GET /ws` (JWT at the upgrade), `/healthz`, `/metrics`.
//! - `connection`: one socket's loop.
//! - `hub`: local connections by user; delivery into bounded per-connection queues.
//! - `delivery`: the slot's Kafka consumer.
//! - `ecs`: the task's own address on ECS Fargate (task metadata endpoint v4).
//! - `emf`: the connection count as a CloudWatch embedded metric (autoscaling on AWS).
//! - `heartbeat`: slot lease renewal, session refresh (and presence with it).
//! - `presence`: transitions from this gateway's connections, `watch` checked and answered.
//! - `metrics`: the per-message metric handles, registered once.
//! - `rate`: the per-connection token bucket.

pub mod app;
pub mod config;
pub mod connection;
pub mod delivery;
pub mod ecs;
pub mod emf;
pub mod forwarded;
pub mod heartbeat;
pub mod hub;
pub mod limits;
pub mod management;
pub mod metrics;
pub mod outbox;
pub mod pacer;
pub mod presence;
pub mod rate;
pub mod server;
pub mod state;
#[cfg(test)]
mod tests;
pub mod web;
