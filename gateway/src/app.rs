//! Builds the gateway from its config and runs it until stopped.

use std::sync::Arc;

use anyhow::Context;
use connect_kafka::rdkafka::producer::Producer as _;
use connect_kafka::{
    BrokerWatch, KafkaAckBus, KafkaConnectionEvents, KafkaSubmissionBus, Producer, WatchedConsumer,
};
use connect_redis::{RedisLog, RedisRegistry, SlotLease};
use connect_service::telemetry::PrometheusHandle;
use metrics::gauge;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::info;

use crate::config::Config;
use crate::presence::PresencePorts;
use crate::state::{Gateway, GatewayPorts};

pub struct Application {
    gw: Arc<Gateway>,
    listener: TcpListener,
    /// The management listener, when it is not the public one.
    management: Option<TcpListener>,
    consumer: WatchedConsumer,
    producer: Producer,
    /// The producer's fatal error, if it has one: the gateway then stops.
    producer_watch: Arc<BrokerWatch>,
    lease: SlotLease,
    metrics: PrometheusHandle,
    drained: mpsc::Receiver<()>,
}

impl Application {
    pub async fn build(cfg: Config, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        let redis = connect_redis::connect(&cfg.redis)
            .await
            .context("connecting to Redis")?;
        let lease = acquire_slot(redis.clone(), &cfg).await?;
        // Who may watch whom (presence) is read from DynamoDB.
        let dynamo = connect_dynamo::client(&cfg.dynamo).await;
        let slot = lease.slot();
        let (producer, producer_watch) = cfg
            .kafka
            .create_producer("gateway-producer")
            .context("creating the Kafka producer")?;
        let consumer =
            crate::delivery::assigned_consumer(&cfg.kafka, &cfg.topics.outgoing, slot, &cfg.id)
                .context("assigning the slot's partition")?;
        let listener = listen(cfg.addr, cfg.listen_backlog)
            .with_context(|| format!("binding {}", cfg.addr))?;
        let management = match cfg.management_addr {
            Some(addr) => Some(
                listen(addr, cfg.listen_backlog)
                    .with_context(|| format!("binding {addr} (GATEWAY_MANAGEMENT_ADDR)"))?,
            ),
            None => None,
        };
        let bus = Arc::new(KafkaSubmissionBus::new(
            producer.clone(),
            cfg.topics.incoming.clone(),
        ));
        // With other regions, acks also go to them (a device's cursors hold wherever it
        // connects next).
        let redis_log = Arc::new(RedisLog::new(
            redis.clone(),
            connect_redis::connect_logs(&redis, &cfg.redis)
                .await
                .context("connecting to the logs' Redis")?,
            cfg.offline,
        ));
        let starts: Arc<dyn connect_core::ports::ConversationStarts> = redis_log.clone();
        let mut log: Arc<dyn connect_core::ports::ConversationLog> = redis_log;
        if cfg.regions.active() {
            log = Arc::new(connect_core::regions::SharedCursors::new(
                log,
                Arc::new(KafkaAckBus::new(producer.clone(), cfg.topics.acks.clone())),
            ));
        }
        let ports = GatewayPorts {
            bus,
            registry: Arc::new(RedisRegistry::new(redis.clone(), cfg.session_ttl)),
            log,
            starts,
            events: Arc::new(KafkaConnectionEvents::new(
                producer.clone(),
                cfg.topics.user_connected.clone(),
            )),
            presence: PresencePorts {
                store: Arc::new(connect_redis::RedisPresence::new(
                    redis.clone(),
                    cfg.presence.clone(),
                )),
                bus: Arc::new(connect_kafka::KafkaJsonTopic::new(
                    producer.clone(),
                    cfg.topics.presence.clone(),
                )),
                inbox: Arc::new(connect_dynamo::DynamoInbox::new(
                    dynamo.clone(),
                    &cfg.tables,
                )),
                groups: Arc::new(connect_dynamo::DynamoGroups::new(
                    dynamo,
                    &cfg.tables.groups,
                )),
            },
        };
        let (tracker, drained) = mpsc::channel(1);
        let gw = Arc::new(Gateway::new(cfg, slot, ports, tracker));
        gauge!("connect_gateway_slot").set(slot as f64);
        Ok(Self {
            gw,
            listener,
            management,
            consumer,
            producer,
            producer_watch,
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
            management,
            consumer,
            producer,
            producer_watch,
            lease,
            metrics,
            mut drained,
        } = self;
        info!(addr = %listener.local_addr()?, id = %gw.cfg.id, slot = gw.slot, "gateway listening");
        let delivery = tokio::spawn(crate::delivery::run(consumer, gw.clone()));
        let heartbeat = tokio::spawn(crate::heartbeat::run(gw.clone(), lease));
        if let Some((service, every)) = gw.cfg.emf.clone() {
            tokio::spawn(crate::emf::run(gw.clone(), service, every));
        }
        let public = crate::server::public_router(gw.clone());
        let internal = crate::server::management_router(gw.clone(), metrics);
        let (app, internal_server) = match management {
            None => (public.merge(internal), None),
            Some(listener) => {
                info!(addr = %listener.local_addr()?, "management API listening");
                let stopper = gw.clone();
                let server = axum::serve(listener, internal)
                    .with_graceful_shutdown(async move { stopper.stopped().await });
                let public = public.merge(connect_service::ops::health());
                (
                    public,
                    Some(tokio::spawn(std::future::IntoFuture::into_future(server))),
                )
            }
        };
        let stopper = gw.clone();
        // A producer with a fatal error never delivers again: every send would be answered
        // `unavailable` for good. The gateway drains and stops (non-zero) instead, so that its
        // clients reconnect to the others and the orchestrator starts a fresh task.
        let watch = producer_watch.clone();
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = signal => {},
                () = stopper.stopped() => {},
                _ = watch.fatal() => {},
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
        if let Some(server) = internal_server {
            let _ = server.await;
        }
        let _ =
            tokio::task::spawn_blocking(move || producer.flush(std::time::Duration::from_secs(5)))
                .await;
        info!("gateway stopped");
        match producer_watch.failed() {
            Some(reason) => {
                anyhow::bail!("stopped: the Kafka producer hit a fatal error: {reason}")
            }
            None => Ok(()),
        }
    }
}

/// Leases a free slot of `outgoing_messages`. With every slot leased (more gateway tasks than
/// partitions), waits for one to free up (`GATEWAY_SLOT_WAIT_SECS`; 0 = as long as it takes):
/// the gateway listens only once it has a slot, so its health check keeps traffic away.
async fn acquire_slot(redis: connect_redis::RedisConn, cfg: &Config) -> anyhow::Result<SlotLease> {
    let started = std::time::Instant::now();
    loop {
        match SlotLease::acquire(
            redis.clone(),
            &cfg.topics.outgoing,
            cfg.slots,
            &cfg.id,
            cfg.slot_ttl,
        )
        .await
        {
            Ok(lease) => return Ok(lease),
            Err(connect_redis::LeaseError::NoFreeSlot(n))
                if cfg.slot_wait.is_zero() || started.elapsed() < cfg.slot_wait =>
            {
                tracing::warn!(
                    slots = n,
                    "every slot of outgoing_messages is leased; waiting for one to free up"
                );
                tokio::time::sleep(cfg.slot_ttl / 3).await;
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("leasing a slot of outgoing_messages"))
            }
        }
    }
}

/// A listener on `addr` whose kernel queue holds `backlog` connections not yet accepted.
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// 300 clients connect before anything is accepted (a reconnect storm's front): every
    /// handshake completes at once. With a queue of 128 (tokio's default listener) the kernel
    /// drops the rest's SYNs and they wait a second or more for their retransmission.
    #[tokio::test]
    async fn the_listen_queue_holds_a_storms_front_without_dropping_a_syn() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..300).map(|_| async move {
            tokio::time::timeout(
                Duration::from_millis(700),
                tokio::net::TcpStream::connect(addr),
            )
            .await
        });
        let results = futures_util::future::join_all(connects).await;
        let late = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
        assert_eq!(
            late, 0,
            "{late} of 300 connects waited for a SYN retransmission"
        );
        drop(listener);
    }
}
