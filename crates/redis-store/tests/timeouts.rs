//! Redis's timeouts come from `RedisConfig` (`REDIS_RESPONSE_TIMEOUT_MS`,
//! `REDIS_CONNECT_TIMEOUT_MS`): a server that answers late is waited for up to the response
//! timeout, then the call fails as unavailable; a server that never answers the handshake fails
//! each connect attempt after the connect timeout. A scripted server on a local socket plays the slow one.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server that answers each command `+OK` after `delay` (the handshake's at once), and
/// counts nothing: enough RESP for `SET`.
async fn slow_server(delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let commands = text.matches('*').count().max(1);
                    if text.contains("SET") {
                        tokio::time::sleep(delay).await;
                    }
                    let reply = "+OK\r\n".repeat(commands);
                    if socket.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("redis://{addr}")
}

fn config(url: &str, response_ms: &str, connect_ms: &str) -> connect_redis::RedisConfig {
    let settings = connect_config::Settings::from_pairs([
        ("REDIS_URL", url),
        ("REDIS_RESPONSE_TIMEOUT_MS", response_ms),
        ("REDIS_CONNECT_TIMEOUT_MS", connect_ms),
    ]);
    connect_redis::RedisConfig::from_settings(&settings).unwrap()
}

async fn set(cfg: &connect_redis::RedisConfig) -> (Result<(), redis::RedisError>, Duration) {
    let mut conn = connect_redis::connect(cfg).await.expect("connected");
    let started = Instant::now();
    let result = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query_async::<()>(&mut conn)
        .await;
    (result, started.elapsed())
}

#[tokio::test]
async fn a_late_answer_within_the_response_timeout_is_waited_for_and_a_later_one_fails() {
    let url = slow_server(Duration::from_millis(800)).await;
    // The client library's own default (500 ms) would fail this call.
    let (within, took) = set(&config(&url, "2000", "1000")).await;
    assert!(within.is_ok(), "{within:?}");
    assert!(took >= Duration::from_millis(800), "{took:?}");
    let (beyond, took) = set(&config(&url, "300", "1000")).await;
    let err = beyond.expect_err("no answer within 300 ms");
    assert!(err.is_timeout(), "{err:?}");
    assert!(took < Duration::from_millis(800), "{took:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_connect_after_the_connect_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    // Accepts, reads and never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    // Each attempt gives up after 300 ms; the connection manager makes a few, backing off,
    // then fails (an attempt with no bound would wait on the accepted socket for ever).
    let started = Instant::now();
    let connected = connect_redis::connect(&config(&url, "5000", "300")).await;
    assert!(connected.is_err(), "connected to a silent server");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_timeouts_default_to_two_seconds_and_one() {
    let cfg = connect_redis::RedisConfig::from_settings(&connect_config::Settings::from_pairs([(
        "REDIS_URL",
        "redis://127.0.0.1:1",
    )]))
    .unwrap();
    assert_eq!(
        (cfg.response_timeout, cfg.connect_timeout),
        (Duration::from_secs(2), Duration::from_secs(1))
    );
}
