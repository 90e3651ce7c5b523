//! Kafka (MSK) adapter over `rdkafka` with its bundled librdkafka.
//!
//! # Layout
//! - [`config`]: [`KafkaConfig`], the client settings every part shares (brokers, fetch wait,
//!   linger, timeouts) and the client configs built from it.
//! - [`codec`]: the record formats — `incoming_messages` (JSON [`Submission`]) and
//!   `outgoing_messages` (the frame as value, routing in headers, so a gateway parses no JSON).
//! - [`bus`]: [`KafkaSubmissionBus`] and [`KafkaDeliveryBus`], the core's bus ports.
//! - [`group`]: [`GroupConsumer`], a consumer-group member that finishes and commits its work
//!   before a rebalance gives its partitions away.
//! - [`watch`]: [`Producer`] and [`WatchedConsumer`], clients that get their bootstrap servers
//!   back when librdkafka has forgotten every broker.
//! - [`admin`]: [`ensure_topics`], idempotent topic creation.
//! - [`acl`]: each service's Kafka ACLs ([`acl::policy`]) and [`acl::ensure_acls`].
//!
//! [`Submission`]: connect_core::model::Submission

pub mod acl;
pub mod admin;
pub mod bus;
pub mod codec;
pub mod config;
pub mod group;
pub mod watch;

pub use admin::{ensure_topics, rewind_group, RewindTo};
pub use bus::{
    KafkaAckBus, KafkaConnectionEvents, KafkaDeliveryBus, KafkaJsonTopic, KafkaRegionBus,
    KafkaSubmissionBus,
};
pub use config::{KafkaConfig, Topics};
pub use group::{Batch, GroupConsumer, InFlight, PartitionKey, RevokeHook};
pub use rdkafka;
pub use watch::{BrokerWatch, Producer, WatchedConsumer};
