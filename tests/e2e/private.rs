//! A private slice of the stack for tests that kill or misconfigure processes: its own topics,
//! its own gateway and messaging processes (the real binaries; messaging in its own consumer
//! group), on the shared Redis, Kafka and DynamoDB Local. Processes are killed when the slice is
//! dropped.

use crate::helpers::settings;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::helpers::{http_get, metric};

pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/e2e-… → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Partitions of the slice's `incoming_messages`.
pub const INCOMING_PARTITIONS: usize = 6;

pub struct PrivateStack {
    pub gateway: String,
    env: Vec<(String, String)>,
    gateway_proc: Child,
    more_gateways: Vec<Child>,
    /// The running messaging processes: (ops address, process), oldest first.
    messaging: Vec<(String, Child)>,
}

pub async fn wait_healthy(addr: &str, child: &mut Child) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok((200, _)) = http_get(addr, "/healthz").await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("process for {addr} exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{addr} not healthy in 20 s")
}

impl PrivateStack {
    /// Creates the topics and starts a gateway; messaging is started with [`Self::start_messaging`].
    pub async fn start() -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let var = |name: &str, default: &str| {
            (
                name.to_owned(),
                std::env::var(name).unwrap_or_else(|_| default.to_owned()),
            )
        };
        let env = vec![
            var("DYNAMODB_ENDPOINT", "http://127.0.0.1:8000"),
            var("REDIS_URL", "redis://127.0.0.1:6380"),
            var("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("KAFKA_INCOMING_TOPIC".into(), format!("incoming_{id}")),
            ("KAFKA_OUTGOING_TOPIC".into(), format!("outgoing_{id}")),
            // Its own: the shared stack's offline-delivery must not drain to gateways of a slice
            // that is gone.
            (
                "KAFKA_USER_CONNECTED_TOPIC".into(),
                format!("user_connected_{id}"),
            ),
            (
                "INCOMING_PARTITIONS".into(),
                INCOMING_PARTITIONS.to_string(),
            ),
            ("OUTGOING_PARTITIONS".into(), "2".into()),
            // A killed gateway's slot is free again within seconds.
            ("SLOT_LEASE_TTL_SECS".into(), "3".into()),
            ("MESSAGING_GROUP_ID".into(), format!("messaging_{id}")),
            // Presence of its own, and no sweep here: the shared stack's users' offline checks
            // are the shared stack's to publish.
            ("KAFKA_PRESENCE_TOPIC".into(), format!("presence_{id}")),
            (
                "MESSAGING_PRESENCE_GROUP_ID".into(),
                format!("presence_{id}"),
            ),
            ("PRESENCE_SWEEP_MS".into(), "0".into()),
            // Nothing drains this slice's user_connected: live messages need not wait for a
            // backlog that never comes.
            ("GATEWAY_CATCH_UP_TIMEOUT_MS".into(), "100".into()),
            // A killed member is noticed within seconds, not the production defaults' tens.
            ("KAFKA_SESSION_TIMEOUT_MS".into(), "3000".into()),
            ("KAFKA_MAX_POLL_INTERVAL_MS".into(), "8000".into()),
            var("E2E_CHILD_LOG", "warn"),
            (
                "RUST_LOG".into(),
                std::env::var("E2E_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ];
        let status = Command::new(binary("connect-setup"))
            .envs(env.clone())
            .stdout(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("connect-setup failed: {status}");
        }
        let gateway = format!("127.0.0.1:{}", free_port());
        let mut gateway_proc = Command::new(binary("connect-gateway"))
            .envs(env.clone())
            .env("GATEWAY_ADDR", &gateway)
            .env("GATEWAY_ID", format!("gw-{id}"))
            .kill_on_drop(true)
            .spawn()
            .context("starting connect-gateway")?;
        wait_healthy(&gateway, &mut gateway_proc).await?;
        Ok(Self {
            gateway,
            env,
            gateway_proc,
            more_gateways: Vec::new(),
            messaging: Vec::new(),
        })
    }

    /// Starts one more messaging process (same consumer group) with extra env; returns its ops
    /// address (`/healthz`, `/metrics`).
    pub async fn start_messaging(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<String> {
        let ops = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(binary("connect-messaging"))
            .envs(self.env.clone())
            .envs(extra.iter().copied())
            .env("MESSAGING_ADDR", &ops)
            .kill_on_drop(true)
            .spawn()
            .context("starting connect-messaging")?;
        wait_healthy(&ops, &mut child).await?;
        self.messaging.push((ops.clone(), child));
        self.wait_settled().await?;
        Ok(ops)
    }

    /// Waits until the group has settled on the running members: each owns some of the
    /// slice's partitions (while there are enough to go round) and together they own all. A
    /// send read by a member that only just got its partitions may have waited past the shed
    /// limit; tests that count replies start from a settled group.
    async fn wait_settled(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut owned = Vec::new();
            for (ops, _) in &self.messaging {
                owned.push(
                    metric(
                        ops,
                        "connect_kafka_assigned_partitions",
                        "group=\"messaging_",
                    )
                    .await? as usize,
                );
            }
            let every = self.messaging.len() > INCOMING_PARTITIONS || owned.iter().all(|&n| n > 0);
            if every && owned.iter().sum::<usize>() == INCOMING_PARTITIONS {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("messaging group not settled in 30 s: partitions owned {owned:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts another gateway on this slice's topics (it leases the next free slot); returns
    /// its address. It is killed with the slice.
    pub async fn add_gateway(&mut self) -> anyhow::Result<String> {
        let (addr, mut child) = self.spawn_gateway()?;
        wait_healthy(&addr, &mut child).await?;
        self.more_gateways.push(child);
        Ok(addr)
    }

    /// Starts a gateway on this slice's topics without waiting for it: (address, process).
    pub fn spawn_gateway(&self) -> anyhow::Result<(String, Child)> {
        let addr = format!("127.0.0.1:{}", free_port());
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let child = Command::new(binary("connect-gateway"))
            .envs(self.env.clone())
            .env("GATEWAY_ADDR", &addr)
            .env("GATEWAY_ID", format!("gw-more-{id}"))
            .kill_on_drop(true)
            .spawn()
            .context("starting connect-gateway")?;
        Ok((addr, child))
    }

    /// SIGKILL the `i`th gateway added with [`Self::add_gateway`]: its slot lease runs out.
    pub async fn kill_added_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.more_gateways.remove(i);
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    /// Publishes a submission to the slice's `incoming_messages`, as the gateway or the
    /// group-events function does.
    pub async fn submit(&self, submission: &connect_core::model::Submission) -> anyhow::Result<()> {
        use connect_core::ports::SubmissionBus;
        let var = |name: &str| {
            self.env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .with_context(|| format!("{name} not set for the slice"))
        };
        let mut kafka =
            connect_kafka::KafkaConfig::from_settings(&settings()).map_err(anyhow::Error::msg)?;
        kafka.brokers = var("KAFKA_BROKERS")?;
        let (producer, _) = kafka.create_producer("e2e")?;
        let bus = connect_kafka::KafkaSubmissionBus::new(producer, var("KAFKA_INCOMING_TOPIC")?);
        bus.submit(submission).await?;
        Ok(())
    }

    /// The slice's environment (its topics, its messaging group), for its tools.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// SIGTERM every messaging process and waits for each to exit: each finishes, commits and
    /// leaves the group, as ECS stops a task.
    pub async fn stop_messaging(&mut self) -> anyhow::Result<()> {
        for (_, mut child) in std::mem::take(&mut self.messaging) {
            let pid = child.id().context("messaging already exited")?;
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
            anyhow::ensure!(
                status.success(),
                "messaging exited with {status} on SIGTERM"
            );
        }
        Ok(())
    }

    /// SIGKILL every messaging process, no goodbye: nothing is flushed or committed.
    pub async fn kill_messaging(&mut self) -> anyhow::Result<()> {
        while !self.messaging.is_empty() {
            self.kill_messaging_at(0).await?;
        }
        Ok(())
    }

    /// SIGKILL the `i`-th running messaging process (oldest first).
    pub async fn kill_messaging_at(&mut self, i: usize) -> anyhow::Result<()> {
        let (_, mut child) = self.messaging.remove(i);
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        let _ = self.gateway_proc.start_kill();
        for g in &mut self.more_gateways {
            let _ = g.start_kill();
        }
        for (_, m) in &mut self.messaging {
            let _ = m.start_kill();
        }
    }
}

/// One more gateway on the shared stack (shared topics, a free slot), for tests that kill it.
pub struct ExtraGateway {
    pub addr: String,
    pub process: Child,
}

/// A free local address for a listener.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

impl ExtraGateway {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// With extra environment variables.
    pub async fn start_with(extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let addr = free_addr();
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let mut process = Command::new(binary("connect-gateway"))
            .envs(extra.iter().copied())
            .env("GATEWAY_ADDR", &addr)
            .env("GATEWAY_ID", format!("gw-extra-{id}"))
            .env(
                "RUST_LOG",
                std::env::var("E2E_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .context("starting connect-gateway")?;
        wait_healthy(&addr, &mut process).await?;
        Ok(Self { addr, process })
    }

    /// SIGKILL: no drain, no deregistration, nothing parked.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.process.start_kill()?;
        self.process.wait().await?;
        Ok(())
    }
}

/// Another local HTTP API on the shared stack's tables, with its own settings (caps and quotas
/// the stack's API keeps at their defaults).
pub struct ExtraApi {
    pub addr: String,
    _process: Child,
}

impl ExtraApi {
    pub async fn start_with(extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let addr = free_addr();
        let mut process = Command::new(binary("connect-local-api"))
            .envs(extra.iter().copied())
            .env("LOCAL_API_ADDR", &addr)
            .env(
                "RUST_LOG",
                std::env::var("E2E_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .kill_on_drop(true)
            .spawn()
            .context("starting connect-local-api")?;
        // It has no health route: listening, it answers an anonymous call 401.
        for _ in 0..200 {
            if let Ok((401, _)) = http_get(&addr, "/v1/groups").await {
                return Ok(Self {
                    addr,
                    _process: process,
                });
            }
            if let Some(status) = process.try_wait()? {
                bail!("connect-local-api exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("connect-local-api at {addr} not answering in 20 s")
    }
}
