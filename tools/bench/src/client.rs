//! What the tools need of a client: a WebSocket to a gateway and a call on the HTTP API, both
//! with a token minted for the user.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use connect_core::auth::TokenIssuer;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws` on `gateway` as `user` (a token valid for an hour).
pub async fn open(issuer: &TokenIssuer, gateway: &str, user: &str) -> anyhow::Result<Ws> {
    let mut req = format!("ws://{gateway}/ws").into_client_request()?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", issuer.mint(user, 3600)).parse()?,
    );
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// One call on the HTTP API as `user`: (status, JSON body or Null).
pub async fn api_request(
    issuer: &TokenIssuer,
    user: &str,
    method: &str,
    url: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header(
            "authorization",
            format!("Bearer {}", issuer.mint(user, 3600)),
        )
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let res = client.request(req).await?;
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    ))
}
