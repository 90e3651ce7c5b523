//! `connect-chat`: chat by hand against the local stack.
//!
//! ```text
//! cargo run -q -p connect-chat -- --user alice                 # connects to 127.0.0.1:8080
//! cargo run -q -p connect-chat -- --user bob --gateway 127.0.0.1:8081
//! cargo run -q -p connect-chat -- --user alice --print-token   # a dev JWT for other clients
//! ```
//! Type `@bob hello` to send to bob, `#g_7f3a hi all` to a group, `/ack dm:alice:bob 17` to ack,
//! or a raw JSON frame. Every frame from the server is printed as it arrives.

use anyhow::Context;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use connect_core::auth::{JwtSecret, TokenIssuer};

#[derive(Parser)]
#[command(about = "Chat by hand against a Connect Chat gateway")]
struct Args {
    /// Your user id.
    #[arg(long)]
    user: String,
    /// Gateway host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: String,
    /// Your device (acks and redelivery are per device; the user's default device without it).
    #[arg(long)]
    device: Option<String>,
    /// HS256 secret to mint the token with (the local stack's development secret by default).
    #[arg(long, env = "CONNECT_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Print a token valid for a day and exit.
    #[arg(long)]
    print_token: bool,
}

/// Turns a typed line into a frame.
fn frame_of(line: &str, n: u64) -> Option<String> {
    let line = line.trim();
    let id = format!("cli-{}-{n}", std::process::id());
    if let Some(rest) = line.strip_prefix('@') {
        let (to, body) = rest.split_once(' ').unwrap_or((rest, ""));
        return Some(json!({"type":"send","id":id,"to":to,"body":body}).to_string());
    }
    if let Some(rest) = line.strip_prefix('#') {
        let (group, body) = rest.split_once(' ').unwrap_or((rest, ""));
        return Some(json!({"type":"send","id":id,"group":group,"body":body}).to_string());
    }
    if let Some(rest) = line.strip_prefix("/ack ") {
        let (conversation, seq) = rest.split_once(' ')?;
        return Some(
            json!({"type":"ack","conversation":conversation,"seq":seq.trim().parse::<u64>().ok()?})
                .to_string(),
        );
    }
    (!line.is_empty()).then(|| line.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = TokenIssuer::new(&JwtSecret::new(args.secret, false)?).mint(&args.user, 24 * 3600);
    if args.print_token {
        println!("{token}");
        return Ok(());
    }
    let query = args
        .device
        .as_deref()
        .map(|d| format!("?device={d}"))
        .unwrap_or_default();
    let mut req = format!("ws://{}/ws{query}", args.gateway).into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("connecting to {}", args.gateway))?;
    let (mut sink, mut stream) = ws.split();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    eprintln!("connected as {} — type `@user text`, `#group text`, `/ack <conversation> <seq>`; Ctrl-D quits", args.user);
    let mut n = 0;
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    n += 1;
                    match frame_of(&line, n) {
                        Some(frame) => sink.send(Message::Text(frame.into())).await?,
                        None => eprintln!("?? `@user text`, `#group text` or `/ack <conversation> <seq>`"),
                    }
                }
                None => break,
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => println!("{t}"),
                Some(Ok(Message::Close(f))) => { eprintln!("closed: {f:?}"); break; }
                Some(Ok(_)) => {}
                Some(Err(e)) => { eprintln!("connection error: {e}"); break; }
                None => break,
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::frame_of;

    #[test]
    fn typed_lines_become_frames() {
        let f: serde_json::Value =
            serde_json::from_str(&frame_of("@bob hi there", 1).unwrap()).unwrap();
        assert_eq!(
            (f["type"].as_str(), f["to"].as_str(), f["body"].as_str()),
            (Some("send"), Some("bob"), Some("hi there"))
        );
        let f: serde_json::Value = serde_json::from_str(&frame_of("#g_1 yo", 2).unwrap()).unwrap();
        assert_eq!(f["group"], "g_1");
        let f: serde_json::Value =
            serde_json::from_str(&frame_of("/ack dm:a:b 7", 3).unwrap()).unwrap();
        assert_eq!(f["seq"], 7);
        assert!(frame_of("/ack dm:a:b x", 4).is_none());
        assert!(frame_of("   ", 5).is_none());
    }
}
