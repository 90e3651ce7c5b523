//! One client connection: a single `select!` over socket reads, the outbound queue, publish
//! acks, the ping tick and shutdown. Messages written to the client stay held until it acks
//! them; when the connection ends, what is still held (or still queued) goes back to the
//! user's offline store.

use std::collections::{BTreeMap, HashMap};
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
use connect_core::model::{OfflineEntry, ReplyTo, Session, UserConnected};
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
    conn: Arc<str>,
    bucket: TokenBucket,
    publishes: FuturesUnordered<Publish>,
    /// Messages written and not yet acked: conversation → seq → frame.
    unacked: HashMap<Arc<str>, BTreeMap<u64, Utf8Bytes>>,
    unacked_count: usize,
    /// Set when the loop must end after the current step.
    end: Option<End>,
}

fn error_text(code: ErrorCode, message: &str, id: Option<&str>) -> Utf8Bytes {
    ServerFrame::Error { code, message, id }.to_text().into()
}

/// Who is at the other end, as the upgrade request told.
pub struct Peer {
    pub user: UserId,
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
        conn: conn.clone(),
        bucket,
        publishes: FuturesUnordered::new(),
        unacked: HashMap::new(),
        unacked_count: 0,
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
    let held = c.take_unacked(&mut rx);
    if !held.is_empty() {
        match connect_core::offline::park_unacked(gw.park_ports(), held).await {
            Ok(n) => counter!("connect_gateway_parked_total").increment(n as u64),
            Err(e) => {
                warn!(cause = %e, user = %user, "could not park unacked messages; history has them")
            }
        }
    }
    gauge!("connect_gateway_connections").decrement(1.0);
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

    /// Publishes `user_connected` for this connection, so its offline store is drained to it.
    fn announce(&self) {
        let event = UserConnected {
            user: self.user.clone(),
            conn: self.conn.to_string(),
            gateway: self.gw.cfg.id.clone(),
            endpoint: self.gw.cfg.endpoint.clone(),
            ts: connect_core::now_ms(),
        };
        let pending = self.gw.events.connected(&event);
        tokio::spawn(async move {
            if let Err(e) = pending.await {
                counter!("connect_gateway_announce_failures_total").increment(1);
                warn!(cause = %e, user = %event.user, "user_connected publish failed; the offline store waits for the next connection");
            }
        });
    }

    /// What the client was given and did not ack, plus what is still queued for it.
    fn take_unacked(&mut self, outbox: &mut mpsc::Receiver<Out>) -> Vec<OfflineEntry> {
        outbox.close();
        while let Ok(out) = outbox.try_recv() {
            self.hold(out);
        }
        let user = &self.user;
        std::mem::take(&mut self.unacked)
            .into_iter()
            .flat_map(|(conversation, held)| {
                held.into_iter().map(move |(seq, frame)| OfflineEntry {
                    user: user.clone(),
                    conversation: conversation.to_string(),
                    seq,
                    frame: frame.to_string(),
                })
            })
            .collect()
    }

    /// Holds a message frame until acked; false for other frames.
    fn hold(&mut self, out: Out) -> Option<Utf8Bytes> {
        match out {
            Out::Frame(frame) => Some(frame),
            Out::Message(held) => {
                let Held {
                    frame,
                    conversation,
                    seq,
                } = *held;
                let held = self.unacked.entry(conversation).or_default();
                if held.insert(seq, frame.clone()).is_none() {
                    self.unacked_count += 1;
                }
                if self.unacked_count > self.gw.cfg.max_unacked && self.end.is_none() {
                    counter!("connect_gateway_unacked_overflow_total").increment(1);
                    self.end = Some(End::Close(
                        CloseCode::Policy,
                        "too many unacked messages: ack what you hold",
                    ));
                }
                Some(frame)
            }
            Out::Close => {
                self.end
                    .get_or_insert(End::Close(CloseCode::Normal, "closed by the server"));
                None
            }
        }
    }

    /// The client holds `conversation` up to `seq`: forget those here and in the store.
    fn ack(&mut self, conversation: &str, seq: u64) {
        if let Some(held) = self.unacked.get_mut(conversation) {
            let keep = held.split_off(&(seq.saturating_add(1)));
            self.unacked_count -= held.len();
            *held = keep;
            if held.is_empty() {
                self.unacked.remove(conversation);
            }
        }
        let (offline, user, conversation) = (
            self.gw.offline.clone(),
            self.user.clone(),
            conversation.to_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = offline.ack(&user, &conversation, seq).await {
                warn!(cause = %e, user = %user, "offline ack failed; the entries may come again");
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
        let mut n = 0u64;
        let mut next = Some(first);
        while let Some(out) = next {
            if let Some(frame) = self.hold(out) {
                self.ws.feed(Message::Text(frame)).await?;
                n += 1;
            }
            next = if self.end.is_some() {
                None
            } else {
                outbox.try_recv().ok()
            };
        }
        counter!("connect_gateway_frames_out_total").increment(n);
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
        };
        match handle_text(&self.user, reply, text, &self.gw.cfg.limits) {
            Inbound::Submit(submission) => {
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
