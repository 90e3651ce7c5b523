//! End-to-end tests against the real local stack (`make up`): two gateways, two messaging
//! processes in one consumer group, Apache Kafka, Redis and DynamoDB Local, over real
//! connections. Run with `make test`.

// What every test module reaches as `crate::helpers`.
use connect_e2e::helpers;

mod acl;
mod auth;
mod chat;
mod cli;
mod crash;
mod deploy;
mod frames;
mod groups;
mod history;
mod inbox;
mod limits;
mod offline;
mod overload;
mod presence;
mod private;
mod push;
mod quotas;
mod rebalance;
mod replay;
mod semantics;
mod trace;
mod typing;
mod web;
