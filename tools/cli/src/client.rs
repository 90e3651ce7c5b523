//! A client's two connections: the WebSocket `/ws` of a gateway and calls on the HTTP API, each
//! with a bearer token. Used by `connect` and by the load, benchmark and fault tools.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long an HTTP API call may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens `/ws` on `gateway` (`host:port`, or a `ws://` / `wss://` URL) with `token`, as
/// `device` (the user's default device without one). A refusal names its status and reason.
pub async fn open(gateway: &str, token: &str, device: Option<&str>) -> anyhow::Result<Ws> {
    let base = if gateway.contains("://") {
        gateway.trim_end_matches('/').to_owned()
    } else {
        format!("ws://{gateway}")
    };
    let query = device.map(|d| format!("?device={d}")).unwrap_or_default();
    let mut req = format!("{base}/ws{query}").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(res)) => {
            let body = res
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            anyhow::bail!(
                "the gateway at {gateway} refused the connection ({}): {}",
                res.status(),
                error_message(&body)
            )
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot reach the gateway at {gateway} (is the stack up? `make up`)"
        ))),
    }
}

/// The message of a contract error body (`{"error":{"code","message"}}`), or the body itself.
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message")?.as_str()?
            ))
        })
        .unwrap_or_else(|| body.trim().to_owned())
}

/// One call on the HTTP API: (status, JSON body or `Null`).
pub async fn api(
    token: &str,
    method: &str,
    url: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .with_context(|| format!("bad URL {url}"))?;
    let call = async {
        let res = client.request(req).await?;
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await?.to_bytes();
        anyhow::Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        ))
    };
    tokio::time::timeout(API_TIMEOUT, call)
        .await
        .with_context(|| format!("{method} {url}: no answer in {API_TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach the HTTP API at {url} (is the stack up? `make up`)"))
}

/// [`api`], with anything but a 2xx turned into an error that names the contract's code.
pub async fn api_ok(
    token: &str,
    method: &str,
    url: &str,
    body: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let (status, json) = api(token, method, url, body).await?;
    if (200..300).contains(&status) {
        return Ok(json);
    }
    anyhow::bail!(
        "{method} {url} answered {status}: {}",
        error_message(&json.to_string())
    )
}
