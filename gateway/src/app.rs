//! Builds the gateway from its config and runs it until stopped.

use std::sync::Arc;

use anyhow::Context;
use connect_kafka::rdkafka::consumer::StreamConsumer;
use connect_kafka::rdkafka::producer::{FutureProducer, Producer};
use connect_kafka::{KafkaConnectionEvents, KafkaSubmissionBus};
use connect_redis::{RedisLog, RedisRegistry, SlotLease};
use connect_service::telemetry::PrometheusHandle;
use metrics::gauge;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::info;

use crate::config::Config;
use crate::state::{Gateway, GatewayPorts};

pub struct Application {
    gw: Arc<Gateway>,
    listener: TcpListener,
    consumer: StreamConsumer,
    producer: FutureProducer,
    lease: SlotLease,
    metrics: PrometheusHandle,
    drained: mpsc::Receiver<()>,
}

impl Application {
    pub async fn build(cfg: Config, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        let redis = connect_redis::connect(&cfg.redis_url)
            .await
            .context("connecting to Redis")?;
        let lease = SlotLease::acquire(
            redis.clone(),
            &cfg.topics.outgoing,
            cfg.slots,
            &cfg.id,
            cfg.slot_ttl,
        )
        .await
        .context("leasing a slot of outgoing_messages")?;
        let slot = lease.slot();
        let producer: FutureProducer = cfg
            .kafka
            .producer()
            .create()
            .context("creating the Kafka producer")?;
        let consumer =
            crate::delivery::assigned_consumer(&cfg.kafka, &cfg.topics.outgoing, slot, &cfg.id)
                .context("assigning the slot's partition")?;
        let listener = TcpListener::bind(cfg.addr)
            .await
            .with_context(|| format!("binding {}", cfg.addr))?;
        let bus = Arc::new(KafkaSubmissionBus::new(
            producer.clone(),
            cfg.topics.incoming.clone(),
        ));
        let ports = GatewayPorts {
            bus,
            registry: Arc::new(RedisRegistry::new(redis.clone(), cfg.session_ttl)),
            log: Arc::new(RedisLog::new(redis, cfg.offline)),
            events: Arc::new(KafkaConnectionEvents::new(
                producer.clone(),
                cfg.topics.user_connected.clone(),
            )),
        };
        let (tracker, drained) = mpsc::channel(1);
        let gw = Arc::new(Gateway::new(cfg, slot, ports, tracker));
        gauge!("connect_gateway_slot").set(slot as f64);
        Ok(Self {
            gw,
            listener,
            consumer,
            producer,
            lease,
            metrics,
            drained,
        })
    }

    /// Serves until `signal` resolves (or the gateway stops itself), then drains: connections are
    /// closed with 1001 and deregistered, the slot is released, the producer flushed.
    pub async fn run_until_stopped(
        self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            gw,
            listener,
            consumer,
            producer,
            lease,
            metrics,
            mut drained,
        } = self;
        info!(addr = %listener.local_addr()?, id = %gw.cfg.id, slot = gw.slot, "gateway listening");
        let delivery = tokio::spawn(crate::delivery::run(consumer, gw.clone()));
        let heartbeat = tokio::spawn(crate::heartbeat::run(gw.clone(), lease));
        let app = crate::server::router(gw.clone(), metrics);
        let stopper = gw.clone();
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = signal => {},
                () = stopper.stopped() => {},
            }
            stopper.stop();
        })
        .await?;
        info!(connections = gw.hub.len(), "draining");
        let drain_timeout = gw.cfg.drain_timeout;
        drop(gw);
        let _ = tokio::time::timeout(drain_timeout, drained.recv()).await;
        let _ = heartbeat.await;
        let _ = delivery.await;
        let _ =
            tokio::task::spawn_blocking(move || producer.flush(std::time::Duration::from_secs(5)))
                .await;
        info!("gateway stopped");
        Ok(())
    }
}
