//! The gateway's configuration, from env vars (docs/configuration.md has every name and default).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use connect_core::auth::{JwtSecret, TokenRules};
use connect_dynamo::{DynamoConfig, Tables};
use connect_kafka::{KafkaConfig, Topics};
use connect_protocol::FrameLimits;
use connect_redis::{OfflineLimits, PresenceConfig};

use crate::limits::{Limits, Rate};

#[derive(Debug, Clone)]
pub struct Config {
    /// `GATEWAY_ADDR`: the public listener (`/ws`, `/healthz`).
    pub addr: SocketAddr,
    /// `GATEWAY_MANAGEMENT_ADDR`: a second listener for the management API (`/@connections`)
    /// and `/metrics`, which the load balancer does not expose. Unset: both on `GATEWAY_ADDR`
    /// (the local stack).
    pub management_addr: Option<SocketAddr>,
    /// `GATEWAY_LISTEN_BACKLOG` (4096): connections the kernel queues for the listeners before
    /// they are accepted. When a gateway dies its clients reconnect to the others at once; a
    /// short queue (tokio's default listener has 128) drops their SYNs, and each dropped one
    /// waits a second or more for its retransmission. The kernel caps it at `somaxconn`.
    pub listen_backlog: u32,
    pub id: String,
    /// `GATEWAY_ENDPOINT`: where the offline-delivery function reaches this gateway's
    /// management API (recorded with every session). Unset: the management listener's address,
    /// with the task's own IP on ECS ([`Config::discover_endpoint`]).
    pub endpoint: String,
    /// `GATEWAY_SLOT_WAIT_SECS`: how long to wait for a free slot of `outgoing_messages` when
    /// every one is leased (more gateway tasks than partitions); 0 = as long as it takes.
    pub slot_wait: Duration,
    pub kafka: KafkaConfig,
    pub topics: Topics,
    /// `CONNECT_REGION` / `CONNECT_PEER_REGIONS`: with peers, acks are published for them.
    pub regions: connect_core::regions::Regions,
    pub slots: u32,
    pub redis: connect_redis::RedisConfig,
    pub secret: JwtSecret,
    /// `CONNECT_JWT_SECRET_PREVIOUS`: also taken while the secret is rotated (runbook).
    pub previous_secret: Option<JwtSecret>,
    /// `GATEWAY_NEW_CONVERSATIONS_PER_HOUR` (200): direct conversations one user starts per
    /// clock hour (a send to someone they have no messages with); past it such a send gets
    /// `rate_limited`. Each new conversation is Redis state kept for 14 days.
    pub new_conversations_per_hour: u64,
    /// `GATEWAY_TRUSTED_PROXIES`: comma-separated networks of the proxies in front (the ALB's
    /// subnets); the per-address cap and the logs take the client's address from what they
    /// appended to `X-Forwarded-For`. Unset: none, the header is ignored.
    pub trusted_proxies: crate::forwarded::TrustedProxies,
    /// `CONNECT_JWT_ISSUER`, `CONNECT_JWT_AUDIENCE`, `CONNECT_JWT_MAX_LIFETIME_SECS`: what a
    /// token must say beyond `sub` and `exp`.
    pub token_rules: TokenRules,
    pub limits: FrameLimits,
    pub max_ws_message_bytes: usize,
    /// `GATEWAY_WS_READ_BUFFER_BYTES`: each connection's WebSocket read buffer, allocated up
    /// front (the library's default is 128 KiB; chat frames are far smaller, and the buffer
    /// grows to a frame's length once its header is read).
    pub ws_read_buffer: usize,
    /// `GATEWAY_WS_WRITE_BUFFER_BYTES`: frames are gathered up to this before a write (a flush
    /// always writes); grown only when used.
    pub ws_write_buffer: usize,
    pub max_connections: usize,
    /// Connection caps per user and per address, and inbound frame rates (see [`Limits`]).
    pub limits_per: Limits,
    pub outbound_queue: usize,
    /// `GATEWAY_OUTBOUND_QUEUE_BYTES`: a connection whose queue holds more is a slow consumer
    /// and is cut off (what its device did not ack comes again on its next connection).
    pub outbound_queue_bytes: usize,
    /// `GATEWAY_WRITE_TIMEOUT_MS`: a write to a peer that does not take it within this ends the
    /// connection.
    pub write_timeout: Duration,
    /// `GATEWAY_CLOSE_TIMEOUT_MS`: how long a closing connection waits for the peer's close.
    pub close_timeout: Duration,
    /// `GATEWAY_MAX_TOKEN_BYTES`: longer tokens are refused (401) before they are decoded.
    pub max_token_bytes: usize,
    /// `GATEWAY_CLOSE_ON_TOKEN_EXPIRY` (true): a connection is closed (`unauthorized`, 1008)
    /// when its token's `exp` passes.
    pub close_on_token_expiry: bool,
    /// `GATEWAY_ALLOWED_ORIGINS`: comma-separated origins a browser's upgrade may come from
    /// (`https://chat.example.com`); unset or `*` allows any. Requests without `Origin`
    /// (native clients) are not affected.
    pub allowed_origins: Option<Vec<String>>,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub session_ttl: Duration,
    pub slot_ttl: Duration,
    pub drain_timeout: Duration,
    /// `CONNECT_INTERNAL_TOKEN`: required on `/@connections` calls.
    pub internal_token: String,
    /// `GATEWAY_CATCH_UP_TIMEOUT_MS`: how long a new connection's live messages wait for its
    /// backlog (the offline-delivery function's `caught_up`) before they go out regardless.
    pub catch_up_timeout: Duration,
    /// `GATEWAY_POST_WAIT_MS`: how long a management API post (a backlog entry) waits for room
    /// in its connection's queue before it is answered 429 and the drain moves on.
    pub post_wait: Duration,
    /// How long a connection gathers its acks before it reports its user's `delivered` markers
    /// (one record per conversation that moved, not one per ack).
    pub delivered_flush: Duration,
    /// `GATEWAY_READ_FLUSH_MS`: a connection's first `read` after a quiet spell is reported at
    /// once; those that follow within this are gathered and reported together (one marker
    /// record per conversation, its highest seq), so a client that marks every message as it
    /// shows it costs one record per window, and receipts still go within a second.
    pub read_flush: Duration,
    pub max_post_bytes: usize,
    pub offline: OfflineLimits,
    /// `GATEWAY_WEB_API_URL`: where the web client (served at `/`) finds the HTTP API.
    pub web_api_url: String,
    /// Presence in this region: `PRESENCE_DEBOUNCE_MS` (5000), `PRESENCE_RETAIN_DAYS` (30).
    pub presence: PresenceConfig,
    /// `PRESENCE_WATCH_TTL_SECS` (600): how long this gateway's record as a watcher of a user
    /// lives unrefreshed (the heartbeat refreshes what its connections still watch).
    pub watch_ttl: Duration,
    /// `GATEWAY_WATCH_RATE` (0.5/s) and `GATEWAY_WATCH_BURST` (5): `watch` frames per
    /// connection (each may cost reads of up to 256 users' shared conversations).
    pub watch_rate: Rate,
    /// Who may watch whom is read from DynamoDB (`DYNAMODB_*`, the tables' names).
    pub dynamo: DynamoConfig,
    pub tables: Tables,
    /// `GROUP_CACHE_TTL_SECS` (60) and `GROUP_CACHE_MAX` (10000): group rosters kept for the
    /// watch check.
    pub group_cache_ttl: Duration,
    pub group_cache_max: usize,
    /// Development sign-in for the web client (`POST /dev/token`): only with `CONNECT_ENV=local`,
    /// and `GATEWAY_DEV_SIGN_IN` (true) not turned off.
    pub dev_sign_in: bool,
    /// `GATEWAY_EMF_SERVICE`: when set, the connection count goes to CloudWatch as an embedded
    /// metric with this `Service` dimension, every `GATEWAY_EMF_INTERVAL_SECS` (60).
    pub emf: Option<(String, Duration)>,
}

impl Config {
    pub fn from_settings(settings: &connect_config::Settings) -> anyhow::Result<Self> {
        let addr: SocketAddr = settings.parsed("GATEWAY_ADDR", "127.0.0.1:8080".parse()?)?;
        let management_addr: Option<SocketAddr> = settings
            .optional("GATEWAY_MANAGEMENT_ADDR")
            .map(|a| a.parse())
            .transpose()
            .context("GATEWAY_MANAGEMENT_ADDR")?;
        let id = settings.optional("GATEWAY_ID").unwrap_or_else(|| {
            format!(
                "gw-{}-{}",
                addr.port(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        });
        let secs =
            |name: &str, default: u64| settings.parsed(name, default).map(Duration::from_secs);
        let millis =
            |name: &str, default: u64| settings.parsed(name, default).map(Duration::from_millis);
        let rate = |prefix: &str, rate: f64, burst: f64| -> anyhow::Result<Rate> {
            Ok(Rate {
                rate: settings.parsed(&format!("{prefix}_RATE"), rate)?,
                burst: settings.parsed(&format!("{prefix}_BURST"), burst)?,
            })
        };
        let regions =
            connect_core::regions::Regions::from_settings(settings).map_err(anyhow::Error::msg)?;
        let session_ttl = secs("SESSION_TTL_SECS", 60)?;
        Ok(Self {
            presence: PresenceConfig::from_settings(settings, &regions.local)
                .map_err(anyhow::Error::msg)?,
            watch_ttl: secs("PRESENCE_WATCH_TTL_SECS", 600)?,
            watch_rate: rate("GATEWAY_WATCH", 0.5, 5.0)?,
            dynamo: DynamoConfig::from_settings(settings).map_err(anyhow::Error::msg)?,
            tables: Tables::from_settings(settings),
            group_cache_ttl: secs("GROUP_CACHE_TTL_SECS", 60)?,
            group_cache_max: settings.parsed("GROUP_CACHE_MAX", 10_000)?,
            endpoint: settings.string(
                "GATEWAY_ENDPOINT",
                &format!("http://{}", management_addr.unwrap_or(addr)),
            ),
            addr,
            management_addr,
            listen_backlog: settings.parsed("GATEWAY_LISTEN_BACKLOG", 4096)?,
            slot_wait: secs("GATEWAY_SLOT_WAIT_SECS", 0)?,
            id,
            kafka: KafkaConfig::from_settings(settings).map_err(anyhow::Error::msg)?,
            topics: Topics::from_settings(settings),
            regions,
            slots: settings.parsed("OUTGOING_PARTITIONS", 16)?,
            redis: connect_redis::RedisConfig::from_settings(settings)?,
            secret: JwtSecret::new(
                settings.optional("CONNECT_JWT_SECRET"),
                settings.production(),
            )
            .context("CONNECT_JWT_SECRET")?,
            previous_secret: JwtSecret::previous(
                settings.optional("CONNECT_JWT_SECRET_PREVIOUS"),
                settings.production(),
            )
            .context("CONNECT_JWT_SECRET_PREVIOUS")?,
            token_rules: TokenRules::from_settings(settings)?,
            new_conversations_per_hour: settings
                .parsed("GATEWAY_NEW_CONVERSATIONS_PER_HOUR", 200)?,
            trusted_proxies: crate::forwarded::TrustedProxies::parse(
                &settings.string("GATEWAY_TRUSTED_PROXIES", ""),
            )
            .map_err(|e| anyhow::anyhow!("GATEWAY_TRUSTED_PROXIES: {e}"))?,
            limits: FrameLimits {
                max_frame_bytes: settings.parsed("GATEWAY_MAX_FRAME_BYTES", 64 * 1024)?,
                max_body_bytes: settings.parsed("GATEWAY_MAX_BODY_BYTES", 16 * 1024)?,
                max_watch_users: settings.parsed("GATEWAY_MAX_WATCH_USERS", 256)?,
            },
            max_ws_message_bytes: settings.parsed("GATEWAY_MAX_WS_MESSAGE_BYTES", 1024 * 1024)?,
            ws_read_buffer: settings.parsed("GATEWAY_WS_READ_BUFFER_BYTES", 2048)?,
            ws_write_buffer: settings.parsed("GATEWAY_WS_WRITE_BUFFER_BYTES", 8192)?,
            max_connections: settings.parsed("GATEWAY_MAX_CONNECTIONS", 50_000)?,
            limits_per: Limits {
                connections_per_user: settings.parsed("GATEWAY_MAX_CONNECTIONS_PER_USER", 16)?,
                connections_per_address: settings
                    .parsed("GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", 10_000)?,
                send: rate("GATEWAY_SEND", 50.0, 100.0)?,
                frames: rate("GATEWAY_FRAME", 100.0, 200.0)?,
                user_send: rate("GATEWAY_USER_SEND", 100.0, 200.0)?,
                user_frames: rate("GATEWAY_USER_FRAME", 200.0, 400.0)?,
            },
            outbound_queue: settings.parsed("GATEWAY_OUTBOUND_QUEUE", 1024)?,
            outbound_queue_bytes: settings.parsed("GATEWAY_OUTBOUND_QUEUE_BYTES", 1024 * 1024)?,
            write_timeout: millis("GATEWAY_WRITE_TIMEOUT_MS", 10_000)?,
            close_timeout: millis("GATEWAY_CLOSE_TIMEOUT_MS", 5_000)?,
            max_token_bytes: settings.parsed(
                "GATEWAY_MAX_TOKEN_BYTES",
                connect_core::auth::MAX_TOKEN_BYTES,
            )?,
            close_on_token_expiry: settings.parsed("GATEWAY_CLOSE_ON_TOKEN_EXPIRY", true)?,
            allowed_origins: settings
                .optional("GATEWAY_ALLOWED_ORIGINS")
                .filter(|v| v.trim() != "*")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                        .filter(|o| !o.is_empty())
                        .collect()
                }),
            ping_interval: secs("GATEWAY_PING_INTERVAL_SECS", 20)?,
            idle_timeout: secs("GATEWAY_IDLE_TIMEOUT_SECS", 60)?,
            session_ttl,
            slot_ttl: secs("SLOT_LEASE_TTL_SECS", 15)?,
            drain_timeout: secs("GATEWAY_DRAIN_SECS", 10)?,
            internal_token: connect_core::auth::internal_token(settings)?,
            catch_up_timeout: Duration::from_millis(
                settings.parsed("GATEWAY_CATCH_UP_TIMEOUT_MS", 5000)?,
            ),
            post_wait: Duration::from_millis(settings.parsed("GATEWAY_POST_WAIT_MS", 100)?),
            delivered_flush: Duration::from_millis(
                settings.parsed("GATEWAY_DELIVERED_FLUSH_MS", 1000)?,
            ),
            read_flush: Duration::from_millis(settings.parsed("GATEWAY_READ_FLUSH_MS", 250)?),
            max_post_bytes: settings.parsed("GATEWAY_MAX_POST_BYTES", 128 * 1024)?,
            offline: OfflineLimits::from_settings(settings).map_err(anyhow::Error::msg)?,
            web_api_url: settings
                .string("GATEWAY_WEB_API_URL", "http://127.0.0.1:8090")
                .trim_end_matches('/')
                .to_owned(),
            dev_sign_in: !settings.production() && settings.parsed("GATEWAY_DEV_SIGN_IN", true)?,
            emf: match settings.optional("GATEWAY_EMF_SERVICE") {
                Some(service) => Some((service, secs("GATEWAY_EMF_INTERVAL_SECS", 60)?)),
                None => None,
            },
        })
    }

    /// On ECS (`ECS_CONTAINER_METADATA_URI_V4` set) without an explicit `GATEWAY_ENDPOINT`, the
    /// endpoint is the task's own IP and the management port: a wildcard listen address
    /// (`0.0.0.0`) is not an address another host can call.
    pub async fn discover_endpoint(
        &mut self,
        settings: &connect_config::Settings,
    ) -> anyhow::Result<()> {
        if settings.optional("GATEWAY_ENDPOINT").is_some() {
            return Ok(());
        }
        let Some(uri) = settings.optional(crate::ecs::METADATA_ENV) else {
            return Ok(());
        };
        let ip = crate::ecs::own_address(&uri).await?;
        let port = self.management_addr.unwrap_or(self.addr).port();
        self.endpoint = format!("http://{ip}:{port}");
        Ok(())
    }
}
