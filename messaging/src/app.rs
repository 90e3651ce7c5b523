//! Builds messaging from its config ([`Application::build`]) and runs it until stopped
//! ([`Application::run`]): the consume loop, the presence relay and sweep, the ops listener.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use connect_core::groups::MembershipCache;
use connect_core::messaging::MessagingStep;
use connect_core::ports::{DeliveryBus, Ports};
use connect_core::presence::PresenceStore;
use connect_core::seqblocks::SequenceBlocks;
use connect_dynamo::{DynamoChatStore, DynamoSequences};
use connect_kafka::rdkafka::producer::Producer as _;
use connect_kafka::{BrokerWatch, GroupConsumer, KafkaDeliveryBus, KafkaRegionBus, Producer};
use connect_redis::{RedisDedupe, RedisLog, RedisRegistry};
use connect_service::telemetry::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::{consumer, presence};

/// Every part of a messaging process, built and connected, not yet running.
pub struct Application {
    cfg: Config,
    metrics: PrometheusHandle,
    producer: Producer,
    /// The producer's fatal error, if it has one: messaging then stops.
    producer_watch: Arc<BrokerWatch>,
    source: Arc<consumer::Group>,
    step: MessagingStep,
    outputs: consumer::Outputs,
    presence_consumer: GroupConsumer,
    presence_store: Arc<dyn PresenceStore>,
    deliveries: Arc<dyn DeliveryBus>,
    listener: TcpListener,
}

impl Application {
    /// Connects to Redis, DynamoDB and Kafka, joins both consumer groups and binds the ops
    /// listener.
    pub async fn build(cfg: Config, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        let redis = connect_redis::connect(&cfg.redis)
            .await
            .context("connecting to Redis")?;
        let dynamo = connect_dynamo::client(&cfg.dynamo).await;
        let (producer, producer_watch) = cfg
            .kafka
            .create_producer("messaging-producer")
            .context("creating the Kafka producer")?;
        let deliveries: Arc<dyn connect_core::ports::DeliveryBus> =
            Arc::new(KafkaDeliveryBus::new(
                producer.clone(),
                cfg.topics.outgoing.clone(),
                cfg.outgoing_record_max_bytes,
            ));
        let sequences = Arc::new(SequenceBlocks::new(
            Arc::new(DynamoSequences::new(
                dynamo.clone(),
                &cfg.tables.sequences,
                &cfg.regions.local,
                cfg.dynamo_concurrency,
            )),
            cfg.seq_block_max,
            cfg.seq_block_conversations,
        ));
        let inbox = Arc::new(connect_dynamo::DynamoInbox::new(
            dynamo.clone(),
            &cfg.tables,
        ));
        // A batch's messages and inbox writes go to DynamoDB together.
        let history = Arc::new(
            DynamoChatStore::new(dynamo.clone(), &cfg.tables.chat, cfg.dynamo_concurrency)
                .with_inbox((*inbox).clone()),
        );
        let mut chat: Arc<dyn connect_core::ports::ChatStore> = history.clone();
        if let Some(spec) = &cfg.fault_fail_writes {
            tracing::warn!(spec, "fault injection: chat-table writes will fail");
            chat = Arc::new(
                connect_core::faults::FailingWrites::parse(chat, spec)
                    .map_err(anyhow::Error::msg)?,
            );
        }
        let ports = Ports {
            registry: Arc::new(RedisRegistry::new(redis.clone(), cfg.session_ttl)),
            sequences: sequences.clone(),
            groups: Arc::new(MembershipCache::new(
                Arc::new(connect_dynamo::DynamoGroups::new(
                    dynamo.clone(),
                    &cfg.tables.groups,
                )),
                cfg.group_cache_ttl,
                cfg.group_cache_max,
            )),
            chat,
            dedupe: Arc::new(RedisDedupe::new(
                redis.clone(),
                cfg.dedupe_ttl,
                cfg.dedupe_max_per_sender,
            )),
            log: Arc::new(RedisLog::new(
                redis.clone(),
                connect_redis::connect_logs(&redis, &cfg.redis)
                    .await
                    .context("connecting to the logs' Redis")?,
                cfg.offline,
            )),
            markers: inbox.clone(),
            inbox,
            push: Arc::new(connect_redis::RedisPushDevices::new(redis.clone())),
            history,
            deliveries: deliveries.clone(),
        };
        // Other regions: the sends they forward here, their sequenced messages and their acks, as
        // MirrorMaker 2 names them here.
        let mut kinds = consumer::TopicKinds::new();
        kinds.insert(cfg.topics.incoming.clone(), consumer::Kind::Sends);
        for (forward, sequenced, acks) in cfg
            .regions
            .mirrored_topics(&cfg.topics.sequenced, &cfg.topics.acks)
        {
            kinds.insert(forward, consumer::Kind::Forwarded);
            kinds.insert(sequenced, consumer::Kind::Replicas);
            kinds.insert(acks, consumer::Kind::Acks);
        }
        let mut topics: Vec<&str> = kinds.keys().map(String::as_str).collect();
        topics.sort();
        let consumer = connect_kafka::GroupConsumer::subscribe(&cfg.kafka, &cfg.group_id, &topics)
            .context("joining the messaging consumer group")?;
        // Seqs reserved ahead go back before this process's partitions move.
        consumer.on_revoke({
            let sequences = sequences.clone();
            Arc::new(move || {
                let sequences = sequences.clone();
                Box::pin(async move {
                    let n = sequences.give_back_all().await;
                    info!(conversations = n, "gave unused seqs back");
                })
            })
        });
        let listener = tokio::net::TcpListener::bind(cfg.ops_addr)
            .await
            .with_context(|| format!("binding {}", cfg.ops_addr))?;
        info!(ops = %cfg.ops_addr, group = %cfg.group_id, ?topics, region = %cfg.regions.local, peers = ?cfg.regions.peers, "messaging running");
        // Presence: every region's transitions, relayed to the watching gateways; the due
        // offline checks swept.
        let presence_store: Arc<dyn PresenceStore> = Arc::new(connect_redis::RedisPresence::new(
            redis.clone(),
            cfg.presence.clone(),
        ));
        let mut presence_topics = vec![cfg.topics.presence.clone()];
        presence_topics.extend(
            cfg.regions
                .peers
                .iter()
                .map(|p| connect_core::regions::remote_topic(p, &cfg.topics.presence)),
        );
        let presence_topics: Vec<&str> = presence_topics.iter().map(String::as_str).collect();
        let presence_consumer =
            GroupConsumer::subscribe(&cfg.kafka, &cfg.presence_group_id, &presence_topics)
                .context("joining the presence consumer group")?;
        let step = MessagingStep::new(ports)
            .shed_after_ms(cfg.shed_after_ms)
            .receipts_live_max_members(cfg.receipts_live_max_members)
            .typing_limits(cfg.typing_max_age_ms, cfg.typing_max_members)
            .place_step_ms(cfg.inbox_place_step_ms)
            .regions(cfg.regions.clone());
        let outputs = consumer::Outputs {
            deliveries: deliveries.clone(),
            pushes: Arc::new(connect_kafka::KafkaJsonTopic::new(
                producer.clone(),
                cfg.topics.push.clone(),
            )),
            regions: cfg.regions.active().then(|| {
                Arc::new(KafkaRegionBus::new(
                    producer.clone(),
                    cfg.topics.sequenced.clone(),
                    cfg.topics.incoming.clone(),
                )) as Arc<dyn connect_core::regions::RegionBus>
            }),
            metrics: Arc::new(crate::metrics::BatchMetrics::register()),
        };
        Ok(Self {
            source: Arc::new(consumer::Group { consumer, kinds }),
            cfg,
            metrics,
            producer,
            producer_watch,
            step,
            outputs,
            presence_consumer,
            presence_store,
            deliveries,
            listener,
        })
    }

    /// Runs until `shutdown` resolves (then finishes the batch in hand and commits it), or until
    /// the consume loop must stop (a batch whose work did not finish: Err, so that the process
    /// exits non-zero and its orchestrator starts another; the partitions' next owner replays
    /// its records).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            cfg,
            metrics,
            producer,
            producer_watch,
            source,
            step,
            outputs,
            presence_consumer,
            presence_store,
            deliveries,
            listener,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let ops = tokio::spawn({
            let mut stop = stop_rx.clone();
            async move {
                axum::serve(listener, connect_service::ops::router(metrics))
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }
        });
        let presence_relay = tokio::spawn(presence::relay(
            presence_consumer,
            presence_store.clone(),
            deliveries,
            cfg.pipeline.batch_max,
            stop_rx.clone(),
        ));
        let presence_sweep = (!cfg.presence_sweep.is_zero()).then(|| {
            tokio::spawn(presence::sweep(
                presence_store,
                Arc::new(connect_kafka::KafkaJsonTopic::new(
                    producer.clone(),
                    cfg.topics.presence.clone(),
                )),
                cfg.presence_sweep,
                cfg.presence_sweep_max,
                stop_rx.clone(),
            ))
        });
        let mut work = tokio::spawn(consumer::run(
            source,
            step,
            outputs,
            cfg.pipeline,
            cfg.fault_pause_before_commit,
            stop_rx,
        ));
        let worked = tokio::select! {
            () = shutdown => {
                info!("stopping: finishing the batch in hand, then committing");
                stop_tx.send_replace(true);
                work.await
            }
            // A producer with a fatal error never delivers again: the batch in flight would be
            // retried for good. Stop (non-zero) so that the partitions move to another process
            // and the orchestrator starts a fresh one; what was not committed is replayed.
            _ = producer_watch.fatal() => {
                stop_tx.send_replace(true);
                work.abort();
                work.await
            }
            // The consume loop stops on its own only when it must (a batch that did not finish).
            ended = &mut work => {
                stop_tx.send_replace(true);
                ended
            }
        };
        let _ = presence_relay.await;
        if let Some(sweep) = presence_sweep {
            let _ = sweep.await;
        }
        let _ = ops.await;
        let _ =
            tokio::task::spawn_blocking(move || producer.flush(std::time::Duration::from_secs(5)))
                .await;
        info!("messaging stopped");
        if let Some(reason) = producer_watch.failed() {
            anyhow::bail!("stopped: the Kafka producer hit a fatal error: {reason}");
        }
        worked
            .context("the consume loop panicked")?
            .context("the consume loop stopped")?;
        Ok(())
    }
}
