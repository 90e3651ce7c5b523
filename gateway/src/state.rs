//! What every connection of a gateway shares.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};

use connect_core::auth::TokenVerifier;
use connect_core::model::SessionRoute;
use connect_core::ports::{
    ConnectionEvents, ConversationLog, ConversationStarts, SessionRegistry, SubmissionBus,
};

use crate::config::Config;
use crate::hub::Hub;
use crate::limits::Admission;
use crate::presence::{Presence, PresencePorts};

/// The backends a gateway talks to.
pub struct GatewayPorts {
    pub bus: Arc<dyn SubmissionBus>,
    pub registry: Arc<dyn SessionRegistry>,
    pub log: Arc<dyn ConversationLog>,
    /// Direct conversations started per user and hour.
    pub starts: Arc<dyn ConversationStarts>,
    pub events: Arc<dyn ConnectionEvents>,
    pub presence: PresencePorts,
}

#[cfg(any(test, feature = "memory"))]
impl GatewayPorts {
    /// Every backend in `mem` but the bus, with presence nobody uses: the in-process tests'
    /// and `connect-bench gateway`'s gateway.
    pub fn in_memory(mem: Arc<connect_core::memory::Memory>, bus: Arc<dyn SubmissionBus>) -> Self {
        use connect_core::memory::NoPresence;
        Self {
            bus,
            registry: mem.clone(),
            log: mem.clone(),
            starts: mem.clone(),
            events: mem.clone(),
            presence: PresencePorts {
                store: Arc::new(NoPresence),
                bus: Arc::new(NoPresence),
                inbox: mem.clone(),
                groups: mem,
            },
        }
    }
}

pub struct Gateway {
    pub cfg: Config,
    /// This gateway's partition of `outgoing_messages`.
    pub slot: u32,
    pub verifier: TokenVerifier,
    pub hub: Hub,
    pub bus: Arc<dyn SubmissionBus>,
    pub registry: Arc<dyn SessionRegistry>,
    pub log: Arc<dyn ConversationLog>,
    pub starts: Arc<dyn ConversationStarts>,
    pub events: Arc<dyn ConnectionEvents>,
    pub presence: Presence,
    /// Caps open connections (`GATEWAY_MAX_CONNECTIONS`).
    pub permits: Arc<Semaphore>,
    /// Caps connections per user and per address; holds each user's rate buckets.
    pub admission: Arc<Admission>,
    /// Each connection holds a clone; when all are dropped the gateway has drained.
    pub tracker: mpsc::Sender<()>,
    /// The per-message metrics' handles.
    pub metrics: crate::metrics::HotMetrics,
    stop: watch::Sender<bool>,
}

impl Gateway {
    pub fn new(cfg: Config, slot: u32, ports: GatewayPorts, tracker: mpsc::Sender<()>) -> Self {
        let GatewayPorts {
            bus,
            registry,
            log,
            starts,
            events,
            presence,
        } = ports;
        Self {
            verifier: TokenVerifier::with_rules(&cfg.secret, &cfg.token_rules)
                .also(cfg.previous_secret.as_ref())
                .max_len(cfg.max_token_bytes),
            permits: Arc::new(Semaphore::new(cfg.max_connections)),
            admission: Arc::new(Admission::new(cfg.limits_per.clone())),
            hub: Hub::default(),
            presence: Presence::new(
                presence,
                cfg.session_ttl,
                cfg.watch_ttl,
                (cfg.group_cache_ttl, cfg.group_cache_max),
            ),
            stop: watch::channel(false).0,
            metrics: crate::metrics::HotMetrics::register(slot),
            cfg,
            slot,
            bus,
            registry,
            log,
            starts,
            events,
            tracker,
        }
    }

    /// Where a local connection is reached, as recorded in the registry.
    pub fn route(&self, conn: &str, device: &str) -> SessionRoute {
        SessionRoute {
            conn: conn.to_owned(),
            slot: self.slot,
            gateway: self.cfg.id.clone(),
            endpoint: self.cfg.endpoint.clone(),
            device: Some(device.to_owned()),
        }
    }

    /// Asks every part of the gateway to stop.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Watches [`Gateway::stop`] (for a loop that subscribes once).
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Resolves once [`Gateway::stop`] was called.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}
