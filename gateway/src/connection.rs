//! One client connection: a single `select!` over socket reads, the outbound queue, publish
//! acks, the ping tick and shutdown. An ack moves the device's cursor: what the device has not
//! acked comes again on its next connection, from the conversations' logs. Until the device's
//! backlog has been posted (`caught_up`, or the catch-up timeout), live messages are held back,
//! so each conversation's backlog comes before its newer live messages.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use connect_core::inbound::{handle_text, Inbound};
use connect_core::model::{ReplyTo, Session, UserConnected};
use connect_core::PortError;
use connect_protocol::{ErrorCode, FrameError, ServerFrame, UserId};

use crate::hub::{ConnInfo, Held, Out};
use crate::rate::TokenBucket;
use crate::state::Gateway;

type Publish = Pin<Box<dyn Future<Output = (String, Result<(), PortError>)> + Send>>;

/// Why the loop ended: the peer went away, or the server closes with a code.
enum End {
    Gone,
    Close(CloseCode, &'static str),
}

struct Connection<S> {
    gw: Arc<Gateway>,
    ws: WebSocketStream<S>,
    user: UserId,
    device: Arc<str>,
    conn: Arc<str>,
    bucket: TokenBucket,
    publishes: FuturesUnordered<Publish>,
    /// Until the backlog is in (or this deadline): live messages held back, in arrival order.
    catching_up: Option<tokio::time::Instant>,
    held_back: Vec<Held>,
    /// The seqs the backlog gave, per conversation (ascending runs): a live message among them
    /// is not written again.
    drained: HashMap<Arc<str>, Vec<(u64, u64)>>,
    /// Set when the loop must end after the current step.
    end: Option<End>,
}

fn error_text(code: ErrorCode, message: &str, id: Option<&str>) -> Utf8Bytes {
    ServerFrame::Error { code, message, id }.to_text().into()
}

/// Who is at the other end, as the upgrade request told.
pub struct Peer {
    pub user: UserId,
    /// `?device=`, or the default device.
    pub device: String,
    pub source_ip: String,
    pub user_agent: String,
}

/// Serves an upgraded socket for `peer.user` until either side ends it.
pub async fn run<S>(gw: Arc<Gateway>, ws: WebSocketStream<S>, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = peer.user;
    let conn: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    let (tx, mut rx) = mpsc::channel(gw.cfg.outbound_queue);
    let info = ConnInfo {
        user: user.clone(),
        connected_at_ms: connect_core::now_ms(),
        source_ip: peer.source_ip,
        user_agent: peer.user_agent,
    };
    gw.hub.add(info, conn.clone(), tx);
    let bucket = TokenBucket::new(gw.cfg.send_rate, gw.cfg.send_burst, Instant::now());
    let mut c = Connection {
        gw: gw.clone(),
        ws,
        user: user.clone(),
        device: peer.device.into(),
        conn: conn.clone(),
        bucket,
        publishes: FuturesUnordered::new(),
        catching_up: Some(tokio::time::Instant::now() + gw.cfg.catch_up_timeout),
        held_back: Vec::new(),
        drained: HashMap::new(),
        end: None,
    };
    gauge!("connect_gateway_connections").increment(1.0);
    match c.open().await {
        Ok(()) => {
            c.announce();
            let end = c.serve(&mut rx).await;
            c.close(end).await;
        }
        Err(e) => {
            warn!(cause = %e, user = %user, "session registration failed; closing");
            let _ =
                c.ws.send(Message::Text(error_text(
                    ErrorCode::Unavailable,
                    "session registry unavailable",
                    None,
                )))
                .await;
            c.close(End::Close(CloseCode::Error, "session registry unavailable"))
                .await;
        }
    }
    gw.hub.remove(&conn);
    if let Err(e) = gw
        .registry
        .remove(&[(user.clone(), conn.to_string())])
        .await
    {
        warn!(cause = %e, user = %user, "could not remove the session; it expires with its TTL");
    }
    gauge!("connect_gateway_connections").decrement(1.0);
}

/// The (conversation, seq) of a `message` frame; None for other frames.
fn message_key(frame: &str) -> Option<(&str, u64)> {
    #[derive(serde::Deserialize)]
    struct Key<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        conversation: Option<&'a str>,
        seq: Option<u64>,
    }
    let key: Key<'_> = serde_json::from_str(frame).ok()?;
    (key.kind == "message").then_some((key.conversation?, key.seq?))
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Registers the session, then says `hello`: once the client reads it, it is reachable.
    async fn open(&mut self) -> Result<(), PortError> {
        let session = Session {
            user: self.user.clone(),
            route: self.gw.route(&self.conn),
        };
        self.gw.registry.upsert(&[session]).await?;
        let hello = ServerFrame::Hello {
            user: self.user.as_str(),
            session: &self.conn,
            gateway: &self.gw.cfg.id,
        };
        self.ws
            .send(Message::Text(hello.to_text().into()))
            .await
            .map_err(|e| PortError::unavailable("websocket", e))?;
        info!(user = %self.user, conn = %self.conn, "connected");
        Ok(())
    }

    /// Publishes `user_connected` for this connection, so its device's backlog is pushed to it.
    fn announce(&self) {
        let event = UserConnected {
            user: self.user.clone(),
            conn: self.conn.to_string(),
            gateway: self.gw.cfg.id.clone(),
            endpoint: self.gw.cfg.endpoint.clone(),
            ts: connect_core::now_ms(),
            device: self.device.to_string(),
        };
        let pending = self.gw.events.connected(&event);
        tokio::spawn(async move {
            if let Err(e) = pending.await {
                counter!("connect_gateway_announce_failures_total").increment(1);
                warn!(cause = %e, user = %event.user, "user_connected publish failed; the backlog waits for the next connection");
            }
        });
    }

    /// The frames to write for `out` now: a live message waits while the backlog comes (up to
    /// a queue's worth: beyond that it all goes, rather than grow without bound); a live
    /// message that the backlog already gave this connection is dropped.
    fn frames_of(&mut self, out: Out) -> Vec<Utf8Bytes> {
        match out {
            Out::Frame(frame) => vec![frame],
            Out::Posted(frame) => {
                if let Some((conversation, seq)) = message_key(&frame) {
                    let runs = self.drained.entry(conversation.into()).or_default();
                    match runs.last_mut() {
                        Some((_, end)) if *end + 1 == seq => *end = seq,
                        _ => runs.push((seq, seq)),
                    }
                }
                vec![frame]
            }
            Out::Message(held) if self.catching_up.is_some() => {
                self.held_back.push(*held);
                if self.held_back.len() >= self.gw.cfg.outbound_queue {
                    counter!("connect_gateway_catch_up_overflow_total").increment(1);
                    return self.caught_up();
                }
                Vec::new()
            }
            Out::Message(held) => self.fresh(*held).into_iter().collect(),
            Out::CaughtUp => self.caught_up(),
            Out::Close => {
                self.end
                    .get_or_insert(End::Close(CloseCode::Normal, "closed by the server"));
                Vec::new()
            }
        }
    }

    /// A live message, unless the backlog had it.
    fn fresh(&self, held: Held) -> Option<Utf8Bytes> {
        let drained = self.drained.get(&held.conversation).is_some_and(|runs| {
            runs.iter()
                .any(|(start, end)| (*start..=*end).contains(&held.seq))
        });
        (!drained).then_some(held.frame)
    }

    /// The backlog is in (or late): the held-back live messages go out, and later ones directly.
    fn caught_up(&mut self) -> Vec<Utf8Bytes> {
        self.catching_up = None;
        std::mem::take(&mut self.held_back)
            .into_iter()
            .filter_map(|held| self.fresh(held))
            .collect()
    }

    /// The device holds `conversation` up to `seq`: its cursor moves there.
    fn ack(&self, conversation: &str, seq: u64) {
        let (log, user, device, conversation) = (
            self.gw.log.clone(),
            self.user.clone(),
            self.device.clone(),
            conversation.to_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = log.ack(&user, &device, &conversation, seq).await {
                warn!(cause = %e, user = %user, "ack failed; those messages may come again");
            }
        });
    }

    async fn serve(&mut self, outbox: &mut mpsc::Receiver<Out>) -> End {
        let gw = self.gw.clone();
        let mut ping = tokio::time::interval(gw.cfg.ping_interval);
        ping.tick().await;
        let mut last_seen = Instant::now();
        loop {
            if let Some(end) = self.end.take() {
                return end;
            }
            let step = tokio::select! {
                () = gw.stopped() => return End::Close(CloseCode::Away, "server shutting down"),
                out = outbox.recv() => match out {
                    Some(out) => self.write_queued(out, outbox).await,
                    None => return End::Close(CloseCode::Policy, "slow consumer: outbound queue full"),
                },
                () = sleep_until_some(self.catching_up) => {
                    counter!("connect_gateway_catch_up_timeouts_total").increment(1);
                    let late = self.caught_up();
                    self.write_frames(late).await
                },
                inbound = self.ws.next() => {
                    last_seen = Instant::now();
                    match inbound {
                        None => return End::Gone,
                        Some(Ok(msg)) => self.on_message(msg).await,
                        Some(Err(WsError::Capacity(e))) => {
                            debug!(cause = %e, "frame over the hard limit");
                            return End::Close(CloseCode::Size, "frame over the hard size limit");
                        }
                        Some(Err(_)) => return End::Gone,
                    }
                }
                Some((id, result)) = self.publishes.next(), if !self.publishes.is_empty() => {
                    self.on_published(id, result).await
                }
                _ = ping.tick() => {
                    if last_seen.elapsed() > gw.cfg.idle_timeout {
                        return End::Close(CloseCode::Away, "ping timeout");
                    }
                    self.ws.send(Message::Ping(Default::default())).await
                }
            };
            if step.is_err() {
                return End::Gone;
            }
        }
    }

    /// Writes a queued frame and whatever else is queued, with one flush.
    async fn write_queued(
        &mut self,
        first: Out,
        outbox: &mut mpsc::Receiver<Out>,
    ) -> Result<(), WsError> {
        let mut frames = Vec::new();
        let mut next = Some(first);
        while let Some(out) = next {
            frames.extend(self.frames_of(out));
            next = if self.end.is_some() {
                None
            } else {
                outbox.try_recv().ok()
            };
        }
        self.write_frames(frames).await
    }

    /// Writes frames with one flush.
    async fn write_frames(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), WsError> {
        if frames.is_empty() {
            return Ok(());
        }
        counter!("connect_gateway_frames_out_total").increment(frames.len() as u64);
        for frame in frames {
            self.ws.feed(Message::Text(frame)).await?;
        }
        self.ws.flush().await
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), WsError> {
        match msg {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) => {
                self.ws
                    .send(Message::Text(error_text(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text frames",
                        None,
                    )))
                    .await
            }
            // tungstenite queues the pong; flushing sends it.
            Message::Ping(_) => self.ws.flush().await,
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(()),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), WsError> {
        let reply = ReplyTo {
            conn: self.conn.to_string(),
            slot: self.gw.slot,
            region: None,
        };
        match handle_text(&self.user, reply, text, &self.gw.cfg.limits) {
            Inbound::Submit(mut submission) => {
                submission.device = Some(self.device.to_string());
                if !self.bucket.try_take(Instant::now()) {
                    counter!("connect_gateway_sends_total", "result" => "rate_limited")
                        .increment(1);
                    let text = error_text(
                        ErrorCode::RateLimited,
                        "too many sends; slow down and retry with the same id",
                        Some(submission.id.as_str()),
                    );
                    return self.ws.send(Message::Text(text)).await;
                }
                let id = submission.id.to_string();
                let pending = self.gw.bus.submit(&submission);
                self.publishes
                    .push(Box::pin(async move { (id, pending.await) }));
                Ok(())
            }
            Inbound::Ack { conversation, seq } => {
                counter!("connect_gateway_acks_total").increment(1);
                self.ack(&conversation.to_string(), seq);
                Ok(())
            }
            Inbound::Reject(err) => self.reject(&err).await,
        }
    }

    async fn reject(&mut self, err: &FrameError) -> Result<(), WsError> {
        counter!("connect_gateway_rejected_frames_total", "code" => err.code.as_str()).increment(1);
        self.ws
            .send(Message::Text(err.to_frame().to_text().into()))
            .await
    }

    async fn on_published(
        &mut self,
        id: String,
        result: Result<(), PortError>,
    ) -> Result<(), WsError> {
        match result {
            Ok(()) => {
                counter!("connect_gateway_sends_total", "result" => "published").increment(1);
                Ok(())
            }
            Err(e) => {
                warn!(cause = %e, user = %self.user, "publish failed");
                counter!("connect_gateway_sends_total", "result" => "unavailable").increment(1);
                let text = error_text(
                    ErrorCode::Unavailable,
                    "message bus unavailable; retry with the same id",
                    Some(&id),
                );
                self.ws.send(Message::Text(text)).await
            }
        }
    }

    async fn close(&mut self, end: End) {
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = self.ws.close(Some(frame)).await;
        }
        info!(user = %self.user, conn = %self.conn, "disconnected");
    }
}
