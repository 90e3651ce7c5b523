//! The adapters over TLS (ElastiCache in-transit encryption): a real `redis-server` with a TLS
//! port and a CA made for the test (the `openssl` CLI), reached with `rediss://`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use connect_core::model::LogEntry;
use connect_core::ports::ConversationLog;
use connect_protocol::ConversationId;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("openssl");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for `localhost`, in `dir`.
fn certificates(dir: &Path) {
    let at = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=connect-test-ca", "-keyout"])
        .arg(at("ca.key"))
        .arg("-out")
        .arg(at("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(at("server.key"))
        .arg("-out")
        .arg(at("server.csr")));
    std::fs::write(at("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
        .arg("-in")
        .arg(at("server.csr"))
        .arg("-CA")
        .arg(at("ca.pem"))
        .arg("-CAkey")
        .arg(at("ca.key"))
        .arg("-out")
        .arg(at("server.pem"))
        .arg("-extfile")
        .arg(at("ext.cnf")));
}

/// The server's AUTH token (`requirepass`, as ElastiCache's AuthToken).
const PASSWORD: &str = "connect-test-redis-auth-token-0123456789";

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_offline_log_works_over_tls_with_auth_and_an_unknown_ca_or_no_password_is_refused() {
    let dir = std::env::temp_dir().join(format!("connect-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let port = free_port();
    let _server = Server(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("server.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .args(["--tls-auth-clients", "no", "--requirepass", PASSWORD])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)"),
    );
    let url = format!("rediss://localhost:{port}");
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let mut conn = None;
    for _ in 0..50 {
        let client = connect_redis::client(&url, Some(ca), Some(PASSWORD)).unwrap();
        if let Ok(c) = redis::aio::ConnectionManager::new(client).await {
            conn = Some(connect_redis::RedisConn::Single(c));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let conn = conn.expect("a TLS connection to redis-server");
    let limits = connect_redis::OfflineLimits {
        log_max: 10,
        ttl: Duration::from_secs(60),
    };
    let log = connect_redis::RedisLog::new(conn.clone(), conn, limits);
    let conversation = ConversationId::parse("dm:alice:bob").unwrap();
    let entry = LogEntry {
        conversation: conversation.clone(),
        seq: 1,
        frame: r#"{"type":"message","seq":1}"#.into(),
        mv: 0,
        device: Some("phone".into()),
    };
    log.append(std::slice::from_ref(&entry)).await.unwrap();
    assert_eq!(log.page(&conversation, 0, 10).await.unwrap(), [entry]);

    // The system's CAs do not know the test's CA: the handshake fails.
    let untrusted = connect_redis::client(&url, None, Some(PASSWORD)).unwrap();
    assert!(untrusted.get_multiplexed_async_connection().await.is_err());

    // Trusted, but without the password (or with a wrong one): nothing is answered.
    for password in [None, Some("not-the-auth-token-of-this-server")] {
        let client = connect_redis::client(&url, Some(ca), password).unwrap();
        let refused = match client.get_multiplexed_async_connection().await {
            Err(e) => e,
            Ok(mut c) => redis::cmd("GET")
                .arg("anything")
                .query_async::<Option<String>>(&mut c)
                .await
                .expect_err("a command without AUTH is refused"),
        };
        let text = refused.to_string();
        assert!(
            ["NOAUTH", "WRONGPASS", "AuthenticationFailed"]
                .iter()
                .any(|m| text.contains(m)),
            "{password:?}: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
