//! `connect-bench idle`: idle density of one gateway. Opens N authenticated WebSockets (each
//! reads its `hello`), spread over several 127.0.0.x source addresses so the ephemeral ports of
//! one address do not cap the run, holds them, closes them, and prints the gateway's RSS at each
//! step: fresh, all connected, and after they closed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use connect_core::auth::TokenIssuer;

#[derive(clap::Args)]
pub struct IdleRun {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// The gateway (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: String,
    /// Its pid file (for RSS).
    #[arg(long, default_value = ".local/pids/gateway-8080.pid")]
    pid_file: std::path::PathBuf,
    /// Source addresses 127.0.0.2 … 127.0.0.(1+N), one after another.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Upgrades in flight at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Seconds to hold the connections before measuring (lets the gateway settle).
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// Seconds to wait after closing before the last measurement.
    #[arg(long, default_value_t = 5)]
    after_close: u64,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(issuer: &TokenIssuer, run: &IdleRun, i: usize, tag: &str) -> anyhow::Result<Ws> {
    let gateway: SocketAddr = run.gateway.parse().context("--gateway host:port")?;
    let source = Ipv4Addr::new(127, 0, 0, 2 + (i % run.sources.max(1) as usize) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket
        .connect(gateway)
        .await
        .with_context(|| format!("connect from {source}"))?;
    let mut req = format!("ws://{}/ws", run.gateway).into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", issuer.mint(&format!("{tag}_{i}"), 3600)).parse()?,
    );
    // Small client buffers: this process holds as many sockets as the gateway.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"hello\"") => Ok(ws),
        other => anyhow::bail!("expected hello, got {other:?}"),
    }
}

fn rss_kib(pid_file: &std::path::Path) -> anyhow::Result<u64> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .with_context(|| format!("reading {}", pid_file.display()))?
        .trim()
        .parse()?;
    connect_bench::procs::proc_usage(pid)
        .map(|(_, rss)| rss)
        .context("gateway process gone")
}

pub async fn idle(issuer: &TokenIssuer, run: IdleRun) -> anyhow::Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX)?;
    let tag = crate::unique("idle");
    let fresh = rss_kib(&run.pid_file)?;
    println!(
        "idle: {} connections to {} from {} source addresses (this process may open {limit} files); gateway RSS {:.1} MiB",
        run.connections,
        run.gateway,
        run.sources,
        fresh as f64 / 1024.0
    );
    let t = Instant::now();
    let conns: Vec<Ws> = futures_util::stream::iter(0..run.connections)
        .map(|i| {
            let run = &run;
            let tag = &tag;
            async move { open(issuer, run, i, tag).await }
        })
        .buffer_unordered(run.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let opened = t.elapsed();
    tokio::time::sleep(Duration::from_secs(run.hold)).await;
    let held = rss_kib(&run.pid_file)?;
    let per_conn = (held.saturating_sub(fresh)) as f64 * 1024.0 / conns.len() as f64;
    println!(
        "opened {} in {:.1} s ({:.0}/s); gateway RSS {:.1} MiB: {:.1} KB per idle connection",
        conns.len(),
        opened.as_secs_f64(),
        conns.len() as f64 / opened.as_secs_f64(),
        held as f64 / 1024.0,
        per_conn / 1000.0
    );
    futures_util::stream::iter(conns)
        .for_each_concurrent(run.concurrency, |mut ws| async move {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    tokio::time::sleep(Duration::from_secs(run.after_close)).await;
    let after = rss_kib(&run.pid_file)?;
    println!(
        "closed all; {} s later gateway RSS {:.1} MiB ({:.1} MiB above fresh)",
        run.after_close,
        after as f64 / 1024.0,
        after.saturating_sub(fresh) as f64 / 1024.0
    );
    Ok(())
}
