//! One client connection: a single `select!` over socket reads, the outbound queue, publish
//! acks, the ping tick and shutdown. An ack moves the device's cursor: what the device has not
//! acked comes again on its next connection, from the conversations' logs. Until the device's
//! backlog has been posted (`caught_up`, or the catch-up timeout), live messages are held back,
//! so each conversation's backlog comes before its newer live messages.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use metrics::{counter, gauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn, Instrument};

use connect_core::inbound::{handle_text, Inbound};
use connect_core::model::{MarkerUpdate, ReplyTo, Session, TypingUpdate, UserConnected};
use connect_core::PortError;
use connect_protocol::{ConversationId, ErrorCode, FrameError, ServerFrame, UserId};

use crate::hub::{ConnInfo, Held, Out};
use crate::limits::{Admitted, Limited};
use crate::outbox::{outbox, Evicted, Inbox};
use crate::pacer::Pacer;
use crate::rate::TokenBucket;
use crate::state::Gateway;

/// A publish in flight: the `id` of the send it carries (none: a `read`), and its outcome.
type Publish = Pin<Box<dyn Future<Output = (Option<String>, Result<(), PortError>)> + Send>>;

/// Why the loop ended: the peer went away, or the server closes with a code.
enum End {
    Gone,
    Close(CloseCode, &'static str),
}

/// A write that did not finish within `GATEWAY_WRITE_TIMEOUT_MS`: the peer stopped reading.
fn timed_out() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "write timed out",
    ))
}

struct Connection<S> {
    gw: Arc<Gateway>,
    ws: WebSocketStream<S>,
    user: UserId,
    device: Arc<str>,
    conn: Arc<str>,
    /// Counted against the per-user and per-address caps until dropped; its rate buckets.
    admitted: Admitted,
    publishes: FuturesUnordered<Publish>,
    /// Acks not yet written (conversation → highest seq), and the write in flight: at most one
    /// per connection, so an ack flood costs one Redis round at a time, not one per ack.
    acks: HashMap<String, u64>,
    /// The acks being written; it hands back the conversations refused (not the user's).
    ack_write: Option<JoinHandle<Vec<String>>>,
    /// Acks not yet reported as the user's `delivered` markers, and when they will be.
    delivered: HashMap<ConversationId, u64>,
    delivered_due: Option<tokio::time::Instant>,
    /// `read`s gathered since the last report (highest seq per conversation), and when they go.
    reads: HashMap<ConversationId, u64>,
    reads_due: Option<tokio::time::Instant>,
    /// Receipts: at most one per (user, conversation) per second.
    receipts: Pacer,
    /// `typing` sent on, per conversation: when, and whether it was a stop (at most one per
    /// conversation per second; a change between typing and stopped goes at once).
    typing: HashMap<ConversationId, (tokio::time::Instant, bool)>,
    /// Direct conversations this connection may send in (known, or counted as started this
    /// hour): only a first send to someone asks Redis.
    may_send: std::collections::HashSet<ConversationId>,
    /// Groups this connection was handed messages of (live or backlog): messaging decided the
    /// user is a member, so their acks need no roster read.
    member_of: std::collections::HashSet<Arc<str>>,
    /// `watch` frames (`GATEWAY_WATCH_RATE`, `GATEWAY_WATCH_BURST`): each may cost reads.
    watches: TokenBucket,
    /// Ends a write stuck on a peer that stopped reading once the hub evicts the connection.
    evicted: Evicted,
    /// When the token's `exp` passes (with the verifier's leeway), if the connection closes then.
    expires: Option<tokio::time::Instant>,
    /// Until the backlog is in (or this deadline): live messages held back, in arrival order.
    catching_up: Option<tokio::time::Instant>,
    held_back: Vec<Held>,
    held_back_bytes: usize,
    /// The seqs the backlog gave, per conversation (ascending runs): a live message among them
    /// is not written again.
    drained: HashMap<Arc<str>, Vec<(u64, u64)>>,
    /// Set when the loop must end after the current step.
    end: Option<End>,
}

/// A `watch` not answered within this gets `unavailable`.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

fn error_text(code: ErrorCode, message: &str, id: Option<&str>) -> Utf8Bytes {
    ServerFrame::Error { code, message, id }.to_text().into()
}

/// Who is at the other end, as the upgrade request told.
pub struct Peer {
    pub user: UserId,
    /// The token's `exp` (seconds since the epoch), when the connection is to close then.
    pub expires_at_secs: Option<u64>,
    pub admitted: Admitted,
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
    let conn: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    // A span per connection (OpenTelemetry's attribute names): every line logged while serving
    // it says whose it is.
    let span = tracing::info_span!("connection", "enduser.id" = %peer.user,
        "session.id" = %conn, device = %peer.device);
    serve_connection(gw, ws, peer, conn).instrument(span).await
}

async fn serve_connection<S>(gw: Arc<Gateway>, ws: WebSocketStream<S>, peer: Peer, conn: Arc<str>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = peer.user;
    let (tx, mut rx) = outbox(gw.cfg.outbound_queue, gw.cfg.outbound_queue_bytes);
    let info = ConnInfo {
        user: user.clone(),
        device: peer.device.clone().into(),
        connected_at_ms: connect_core::now_ms(),
        source_ip: peer.source_ip,
        user_agent: peer.user_agent,
    };
    gw.hub.add(info, conn.clone(), tx);
    let expires = peer.expires_at_secs.map(|exp| {
        let left =
            (exp + connect_core::auth::LEEWAY_SECS).saturating_sub(connect_core::now_ms() / 1000);
        tokio::time::Instant::now() + Duration::from_secs(left)
    });
    let mut c = Connection {
        gw: gw.clone(),
        ws,
        user: user.clone(),
        device: peer.device.into(),
        conn: conn.clone(),
        admitted: peer.admitted,
        publishes: FuturesUnordered::new(),
        acks: HashMap::new(),
        ack_write: None,
        delivered: HashMap::new(),
        delivered_due: None,
        reads: HashMap::new(),
        reads_due: None,
        receipts: Pacer::new(Duration::from_secs(1)),
        typing: HashMap::new(),
        may_send: std::collections::HashSet::new(),
        member_of: std::collections::HashSet::new(),
        watches: gw.cfg.watch_rate.bucket(Instant::now()),
        evicted: rx.evicted(),
        expires,
        catching_up: Some(tokio::time::Instant::now() + gw.cfg.catch_up_timeout),
        held_back: Vec::new(),
        held_back_bytes: 0,
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
            let _ = c
                .send_text(error_text(
                    ErrorCode::Unavailable,
                    "session registry unavailable",
                    None,
                ))
                .await;
            c.close(End::Close(CloseCode::Error, "session registry unavailable"))
                .await;
        }
    }
    c.report_reads(true);
    c.flush_acks();
    c.report_delivered();
    gw.hub.remove(&conn);
    if let Err(e) = gw
        .registry
        .remove(&[(user.clone(), conn.to_string())])
        .await
    {
        warn!(cause = %e, user = %user, "could not remove the session; it expires with its TTL");
    } else {
        gw.presence.closed(&user).await;
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

/// Resolves once the gateway is stopping (the loop's one subscription).
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// Waits for the ack write in flight, or forever without one.
async fn ack_written(write: &mut Option<JoinHandle<Vec<String>>>) -> Vec<String> {
    match write {
        Some(handle) => handle.await.unwrap_or_default(),
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
            route: self.gw.route(&self.conn, &self.device),
        };
        self.gw.registry.upsert(&[session]).await?;
        self.gw
            .presence
            .present(std::slice::from_ref(&self.user))
            .await;
        let hello = ServerFrame::Hello {
            user: self.user.as_str(),
            session: &self.conn,
            gateway: &self.gw.cfg.id,
        };
        self.send_text(hello.to_text().into())
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
            resume: None,
            attempt: 0,
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
        if let Out::Message(held) = &out {
            self.handed(&held.conversation);
        }
        match out {
            Out::Frame(frame) => vec![frame],
            Out::Posted(frame) => {
                if let Some((conversation, seq)) = message_key(&frame) {
                    self.handed(conversation);
                    let runs = self.drained.entry(conversation.into()).or_default();
                    match runs.last_mut() {
                        Some((_, end)) if *end + 1 == seq => *end = seq,
                        _ => runs.push((seq, seq)),
                    }
                }
                vec![frame]
            }
            Out::Message(held) if self.catching_up.is_some() => {
                self.held_back_bytes += held.frame.len();
                self.held_back.push(*held);
                if self.held_back.len() >= self.gw.cfg.outbound_queue
                    || self.held_back_bytes >= self.gw.cfg.outbound_queue_bytes
                {
                    counter!("connect_gateway_catch_up_overflow_total").increment(1);
                    return self.caught_up();
                }
                Vec::new()
            }
            Out::Message(held) => self.fresh(*held).into_iter().collect(),
            Out::CaughtUp => self.caught_up(),
            Out::Signal { key, frame } => self
                .receipts
                .offer(key, frame, tokio::time::Instant::now())
                .into_iter()
                .collect(),
            Out::Close => {
                self.end
                    .get_or_insert(End::Close(CloseCode::Normal, "closed by the server"));
                Vec::new()
            }
        }
    }

    /// Notes a group this connection was handed a message of.
    fn handed(&mut self, conversation: &str) {
        /// Groups remembered per connection before it starts afresh.
        const REMEMBERED: usize = 1024;
        if !conversation.starts_with("group:") || self.member_of.contains(conversation) {
            return;
        }
        if self.member_of.len() >= REMEMBERED {
            self.member_of.clear();
        }
        self.member_of.insert(conversation.into());
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
        self.held_back_bytes = 0;
        std::mem::take(&mut self.held_back)
            .into_iter()
            .filter_map(|held| self.fresh(held))
            .collect()
    }

    /// The device holds `conversation` up to `seq`: its cursor moves there (now, or after the
    /// write in flight, together with whatever else was acked meanwhile).
    fn ack(&mut self, conversation: &str, seq: u64) {
        let highest = self.acks.entry(conversation.to_owned()).or_insert(seq);
        *highest = (*highest).max(seq);
        if self.ack_write.is_none() {
            self.flush_acks();
        }
    }

    /// Reports the acks gathered since the last report as the user's `delivered` markers: one
    /// record per conversation, to messaging (which checks, clamps and stores them, and sends
    /// the receipts). A lost report is made good by the next ack of that conversation.
    fn report_delivered(&mut self) {
        self.delivered_due = None;
        for (conversation, seq) in std::mem::take(&mut self.delivered) {
            let update = MarkerUpdate {
                conversation,
                user: self.user.clone(),
                read: 0,
                delivered: seq,
                device: None,
                reply: Some(self.reply_to()),
            };
            let pending = self.gw.bus.mark(&update);
            tokio::spawn(async move {
                if let Err(e) = pending.await {
                    counter!("connect_gateway_marker_failures_total").increment(1);
                    debug!(cause = %e, "a delivered report was not published");
                }
            });
        }
    }

    /// Reports the `read`s gathered since the last report: one marker record per conversation
    /// (its highest seq), to messaging, which answers a refused one (`forbidden`) on this
    /// connection, and opens the next gathering window if there was any. `detached`: the
    /// connection is ending, so nobody waits for the publishes.
    fn report_reads(&mut self, detached: bool) {
        // A window stays open while there is something to report: a steady stream of reads
        // costs one record per conversation per window; a quiet window closes.
        self.reads_due =
            (!self.reads.is_empty()).then(|| tokio::time::Instant::now() + self.gw.cfg.read_flush);
        for (conversation, seq) in std::mem::take(&mut self.reads) {
            counter!("connect_gateway_read_reports_total").increment(1);
            let update = MarkerUpdate {
                conversation,
                user: self.user.clone(),
                read: seq,
                delivered: 0,
                device: Some(self.device.to_string()),
                reply: Some(self.reply_to()),
            };
            let pending = self.gw.bus.mark(&update);
            if detached {
                tokio::spawn(async move {
                    if let Err(e) = pending.await {
                        counter!("connect_gateway_marker_failures_total").increment(1);
                        debug!(cause = %e, "a read report was not published");
                    }
                });
            } else {
                self.publishes
                    .push(Box::pin(async move { (None, pending.await) }));
            }
        }
    }

    /// Sends a `typing` on to messaging (which checks membership and fans it out), at most one
    /// per conversation per second; more are dropped without an answer (PROTOCOL.md). Nobody
    /// waits for it: a typing signal lost is never retried.
    fn typing(&mut self, conversation: ConversationId, stop: bool) {
        /// Conversations remembered per connection (forgotten all at once when full).
        const TRACKED: usize = 256;
        let now = tokio::time::Instant::now();
        if let Some((at, was_stop)) = self.typing.get(&conversation) {
            if *was_stop == stop && now.duration_since(*at) < Duration::from_secs(1) {
                counter!("connect_gateway_typing_total", "result" => "dropped").increment(1);
                return;
            }
        }
        if self.typing.len() >= TRACKED && !self.typing.contains_key(&conversation) {
            self.typing.clear();
        }
        self.typing.insert(conversation.clone(), (now, stop));
        counter!("connect_gateway_typing_total", "result" => "sent").increment(1);
        let update = TypingUpdate {
            conversation,
            user: self.user.clone(),
            stop,
            ts: connect_core::now_ms(),
            reply: self.reply_to(),
        };
        let pending = self.gw.bus.typing(&update);
        tokio::spawn(async move {
            if let Err(e) = pending.await {
                debug!(cause = %e, "a typing signal was not published");
            }
        });
    }

    /// Writes the pending acks (one task; each conversation's cursor concurrently), for the
    /// conversations the user is in only: a direct one by its id, a group by the roster cache.
    /// An ack of another is refused (`forbidden`, as a `read` would be) and writes nothing: a
    /// cursor field per acked conversation would let one user fill Redis.
    fn flush_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let acks = std::mem::take(&mut self.acks);
        self.gw.metrics.ack_writes.increment(acks.len() as u64);
        let gw = self.gw.clone();
        let (user, device) = (self.user.clone(), self.device.clone());
        let handed: Vec<bool> = acks
            .keys()
            .map(|c| self.member_of.contains(c.as_str()))
            .collect();
        self.ack_write = Some(tokio::spawn(async move {
            let (gw_ref, user_ref) = (&gw, &user);
            let checks = acks
                .iter()
                .zip(handed)
                .map(|((conversation, _), handed)| async move {
                    let (gw, user) = (gw_ref, user_ref);
                    if handed {
                        return true;
                    }
                    match ConversationId::parse(conversation) {
                        Ok(c) if c.is_direct_member(user) => true,
                        Ok(ConversationId::Group(g)) => {
                            match gw.presence.is_member(&g, user).await {
                                Ok(member) => member,
                                // Unknown for now: written (a member's ack must not be lost to a
                                // failed read; a stranger's costs one field until it expires).
                                Err(e) => {
                                    debug!(cause = %e, "roster unread; the ack is written");
                                    true
                                }
                            }
                        }
                        _ => false,
                    }
                });
            let allowed = futures_util::future::join_all(checks).await;
            let mut refused = Vec::new();
            let mut writes = Vec::new();
            for ((conversation, seq), ok) in acks.iter().zip(allowed) {
                if ok {
                    writes.push(gw.log.ack(&user, &device, conversation, *seq));
                } else {
                    refused.push(conversation.clone());
                }
            }
            for result in futures_util::future::join_all(writes).await {
                if let Err(e) = result {
                    warn!(cause = %e, user = %user, "ack failed; those messages may come again");
                }
            }
            refused
        }));
    }

    /// Answers acks of conversations the user is not in.
    async fn refuse_acks(&mut self, refused: Vec<String>) -> Result<(), WsError> {
        for conversation in refused {
            counter!("connect_gateway_acks_refused_total").increment(1);
            let text = error_text(
                ErrorCode::Forbidden,
                &format!("you are not in {conversation}"),
                None,
            );
            self.send_text(text).await?;
        }
        Ok(())
    }

    /// Sends one text frame, within the write timeout.
    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), WsError> {
        tokio::time::timeout(self.gw.cfg.write_timeout, self.ws.send(Message::Text(text)))
            .await
            .map_err(|_| timed_out())?
    }

    async fn serve(&mut self, outbox: &mut Inbox) -> End {
        let gw = self.gw.clone();
        let mut ping = tokio::time::interval(gw.cfg.ping_interval);
        ping.tick().await;
        let mut last_seen = Instant::now();
        let mut stop = gw.stop_signal();
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<tokio::time::Instant> = None;
        loop {
            if let Some(end) = self.end.take() {
                return end;
            }
            // One timer for every deadline, moved only when the earliest one changes (not a
            // new timer per deadline per turn of the loop).
            let next = self.next_due();
            if next != armed {
                armed = next;
                if let Some(at) = next {
                    timer.as_mut().reset(at);
                }
            }
            let step = tokio::select! {
                () = stopping(&mut stop) => {
                    return End::Close(CloseCode::Away, "server shutting down")
                },
                out = outbox.recv() => match out {
                    Some(out) => self.write_queued(out, outbox).await,
                    None => return End::Close(CloseCode::Policy, "slow consumer: outbound queue full"),
                },
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    let now = tokio::time::Instant::now();
                    if self.expires.is_some_and(|at| at <= now) {
                        counter!("connect_gateway_token_expiries_total").increment(1);
                        let text = error_text(
                            ErrorCode::Unauthorized,
                            "token expired; reconnect with a new token",
                            None,
                        );
                        let _ = self.send_text(text).await;
                        return End::Close(CloseCode::Policy, "token expired");
                    }
                    self.on_due(now).await
                },
                refused = ack_written(&mut self.ack_write) => {
                    self.ack_write = None;
                    self.flush_acks();
                    self.refuse_acks(refused).await
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
                    tokio::time::timeout(gw.cfg.write_timeout, self.ws.send(Message::Ping(Default::default())))
                        .await
                        .unwrap_or_else(|_| Err(timed_out()))
                }
            };
            if let Err(e) = step {
                if matches!(&e, WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut) {
                    counter!("connect_gateway_write_timeouts_total").increment(1);
                    debug!(user = %self.user, "write timed out; dropping the connection");
                }
                return End::Gone;
            }
        }
    }

    /// The earliest of the connection's deadlines: its token's expiry, the end of the catch-up
    /// wait, the next delivered and read reports, the next paced receipt.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        [
            self.expires,
            self.catching_up,
            self.delivered_due,
            self.reads_due,
            self.receipts.due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Does what is due at `now` (the token's expiry aside): the catch-up wait ends, the
    /// delivered and read reports go out, paced receipts are written.
    async fn on_due(&mut self, now: tokio::time::Instant) -> Result<(), WsError> {
        if self.catching_up.is_some_and(|at| at <= now) {
            counter!("connect_gateway_catch_up_timeouts_total").increment(1);
            let late = self.caught_up();
            self.write_frames(late).await?;
        }
        if self.delivered_due.is_some_and(|at| at <= now) {
            self.report_delivered();
        }
        if self.reads_due.is_some_and(|at| at <= now) {
            self.report_reads(false);
        }
        if self.receipts.due().is_some_and(|at| at <= now) {
            let frames = self.receipts.release(now);
            self.write_frames(frames).await?;
        }
        Ok(())
    }

    /// Writes a queued frame and what else is queued (up to a batch), with one flush.
    async fn write_queued(&mut self, first: Out, outbox: &mut Inbox) -> Result<(), WsError> {
        let mut frames = Vec::new();
        for out in outbox.batch(first, |out| matches!(out, Out::Close)) {
            frames.extend(self.frames_of(out));
        }
        self.write_frames(frames).await
    }

    /// Writes frames with one flush, within the write timeout.
    async fn write_frames(&mut self, frames: Vec<Utf8Bytes>) -> Result<(), WsError> {
        if frames.is_empty() {
            return Ok(());
        }
        self.gw.metrics.frames_out.increment(frames.len() as u64);
        let ws = &mut self.ws;
        let write = async move {
            for frame in frames {
                ws.feed(Message::Text(frame)).await?;
            }
            ws.flush().await
        };
        tokio::select! {
            written = tokio::time::timeout(self.gw.cfg.write_timeout, write) => {
                written.map_err(|_| timed_out())?
            }
            () = self.evicted.wait() => Err(WsError::Io(std::io::Error::other("evicted as a slow consumer"))),
        }
    }

    /// Takes a frame from the connection's and the user's rate limits; when over either, the
    /// `rate_limited` error to answer with.
    /// A send that would start one direct conversation more than
    /// `GATEWAY_NEW_CONVERSATIONS_PER_HOUR` allows: its refusal.
    async fn new_conversation_refused(
        &mut self,
        submission: &connect_core::model::Submission,
    ) -> Option<Utf8Bytes> {
        /// Conversations remembered per connection before it asks again.
        const REMEMBERED: usize = 1024;
        let conversation = &submission.conversation;
        if conversation.group_id().is_some() || self.may_send.contains(conversation) {
            return None;
        }
        let limit = self.gw.cfg.new_conversations_per_hour;
        match self
            .gw
            .starts
            .may_send(&self.user, conversation, limit, 3600)
            .await
        {
            Ok(true) => {
                if self.may_send.len() >= REMEMBERED {
                    self.may_send.clear();
                }
                self.may_send.insert(conversation.clone());
                None
            }
            Ok(false) => {
                counter!("connect_gateway_rate_limited_total", "scope" => "user", "frame" => "new_conversation")
                    .increment(1);
                Some(error_text(
                    ErrorCode::RateLimited,
                    &format!("at most {limit} new conversations an hour; try again later"),
                    Some(submission.id.as_str()),
                ))
            }
            // Unknown for now: the send goes (messaging needs that Redis too, and answers
            // `unavailable` if it is down).
            Err(e) => {
                debug!(cause = %e, "new-conversation count unread; the send goes");
                None
            }
        }
    }

    fn rate_limited(&mut self, is_send: bool, id: Option<&str>) -> Option<Utf8Bytes> {
        let limited = self.admitted.rates.take(is_send, Instant::now()).err()?;
        let scope = match limited {
            Limited::Connection => "connection",
            Limited::User => "user",
        };
        counter!("connect_gateway_rate_limited_total", "scope" => scope, "frame" => if is_send { "send" } else { "other" })
            .increment(1);
        Some(error_text(
            ErrorCode::RateLimited,
            if is_send {
                "too many sends; slow down and retry with the same id"
            } else {
                "too many frames; slow down"
            },
            id,
        ))
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), WsError> {
        match msg {
            Message::Text(text) => self.on_text(&text).await,
            Message::Binary(_) => {
                let text = self.rate_limited(false, None).unwrap_or_else(|| {
                    error_text(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text frames",
                        None,
                    )
                });
                self.send_text(text).await
            }
            // tungstenite queues the pong; flushing sends it (a ping flood gets no pongs).
            Message::Ping(_) => {
                if self.rate_limited(false, None).is_some() {
                    return Ok(());
                }
                tokio::time::timeout(self.gw.cfg.write_timeout, self.ws.flush())
                    .await
                    .map_err(|_| timed_out())?
            }
            Message::Pong(_) | Message::Close(_) | Message::Frame(_) => Ok(()),
        }
    }

    /// Where messaging answers this connection.
    fn reply_to(&self) -> ReplyTo {
        ReplyTo {
            conn: self.conn.to_string(),
            slot: self.gw.slot,
            region: None,
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), WsError> {
        match handle_text(&self.user, self.reply_to(), text, &self.gw.cfg.limits) {
            Inbound::Submit(mut submission) => {
                submission.device = Some(self.device.to_string());
                if let Some(text) = self.rate_limited(true, Some(submission.id.as_str())) {
                    counter!("connect_gateway_sends_total", "result" => "rate_limited")
                        .increment(1);
                    return self.send_text(text).await;
                }
                if let Some(text) = self.new_conversation_refused(&submission).await {
                    counter!("connect_gateway_sends_total", "result" => "rate_limited")
                        .increment(1);
                    return self.send_text(text).await;
                }
                let id = submission.id.to_string();
                let pending = self.gw.bus.submit(&submission);
                self.publishes
                    .push(Box::pin(async move { (Some(id), pending.await) }));
                Ok(())
            }
            Inbound::Ack { conversation, seq } => {
                if let Some(text) = self.rate_limited(false, None) {
                    return self.send_text(text).await;
                }
                self.gw.metrics.acks.increment(1);
                self.ack(&conversation.to_string(), seq);
                if conversation.is_direct_member(&self.user) || conversation.group_id().is_some() {
                    let highest = self.delivered.entry(conversation).or_insert(seq);
                    *highest = (*highest).max(seq);
                    self.delivered_due.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.gw.cfg.delivered_flush
                    });
                }
                Ok(())
            }
            Inbound::Read { conversation, seq } => {
                if let Some(text) = self.rate_limited(false, None) {
                    return self.send_text(text).await;
                }
                self.gw.metrics.reads.increment(1);
                let highest = self.reads.entry(conversation).or_insert(seq);
                *highest = (*highest).max(seq);
                // The first read after a quiet spell goes at once (no added wait, and a client
                // that reads and then leaves has its read out first); later ones are gathered
                // until the window ends.
                if self.reads_due.is_none() {
                    self.report_reads(false);
                }
                Ok(())
            }
            Inbound::Typing { conversation, stop } => {
                if let Some(text) = self.rate_limited(false, None) {
                    return self.send_text(text).await;
                }
                self.typing(conversation, stop);
                Ok(())
            }
            Inbound::Watch(users) => {
                if let Some(text) = self.rate_limited(false, None) {
                    return self.send_text(text).await;
                }
                if !self.watches.try_take(Instant::now()) {
                    counter!("connect_gateway_rate_limited_total", "scope" => "connection", "frame" => "watch")
                        .increment(1);
                    let text = error_text(
                        ErrorCode::RateLimited,
                        "too many watch frames; slow down",
                        None,
                    );
                    return self.send_text(text).await;
                }
                self.watch(users).await
            }
            Inbound::Reject(err) => {
                if let Some(text) = self.rate_limited(false, None) {
                    return self.send_text(text).await;
                }
                self.reject(&err).await
            }
        }
    }

    /// Replaces the watch list: the users this connection may watch are watched (recorded in
    /// the hub first, so a change relayed meanwhile reaches it) and answered with their views,
    /// the others with `hidden`, one frame per user in the list's order.
    async fn watch(&mut self, users: Vec<UserId>) -> Result<(), WsError> {
        counter!("connect_gateway_watches_total").increment(1);
        let gw = self.gw.clone();
        let checked = tokio::time::timeout(WATCH_TIMEOUT, async {
            let allowed = gw.presence.watchable(&self.user, &users).await?;
            let visible: Vec<UserId> = users
                .iter()
                .zip(&allowed)
                .filter(|(_, a)| **a)
                .map(|(u, _)| u.clone())
                .collect();
            gw.hub.watch(&self.conn, &visible);
            let views = gw.presence.record(&visible, gw.slot).await?;
            Ok::<_, PortError>((allowed, views))
        })
        .await
        .unwrap_or_else(|_| Err(PortError::unavailable("presence", "watch timed out")));
        let (allowed, views) = match checked {
            Ok(answer) => answer,
            Err(e) => {
                warn!(cause = %e, user = %self.user, "watch failed");
                let err = FrameError::new(
                    ErrorCode::Unavailable,
                    "presence unavailable; send the watch again",
                );
                return self.reject(&err).await;
            }
        };
        let mut views = views.into_iter();
        let mut frames = Vec::with_capacity(users.len());
        for (user, allowed) in users.iter().zip(allowed) {
            if !allowed {
                frames.push(connect_core::presence::hidden_frame(user).into());
                continue;
            }
            let Some(view) = views.next() else { break };
            // A newer view that reached this connection meanwhile stands.
            if gw.hub.answer(&self.conn, user, view.version) {
                frames.push(view.frame(user).into());
            }
        }
        self.write_frames(frames).await
    }

    async fn reject(&mut self, err: &FrameError) -> Result<(), WsError> {
        counter!("connect_gateway_rejected_frames_total", "code" => err.code.as_str()).increment(1);
        self.send_text(err.to_frame().to_text().into()).await
    }

    async fn on_published(
        &mut self,
        id: Option<String>,
        result: Result<(), PortError>,
    ) -> Result<(), WsError> {
        match result {
            Ok(()) => {
                if id.is_some() {
                    self.gw.metrics.sends_published.increment(1);
                }
                Ok(())
            }
            Err(e) => {
                warn!(cause = %e, user = %self.user, "publish failed");
                counter!("connect_gateway_sends_total", "result" => "unavailable").increment(1);
                let text = match &id {
                    Some(id) => error_text(
                        ErrorCode::Unavailable,
                        "message bus unavailable; retry with the same id",
                        Some(id),
                    ),
                    None => error_text(
                        ErrorCode::Unavailable,
                        "message bus unavailable; send the read again",
                        None,
                    ),
                };
                self.send_text(text).await
            }
        }
    }

    /// Sends the close frame and waits for the peer's (or the end of the stream), within the
    /// close timeout; a peer that went away gets nothing.
    async fn close(&mut self, end: End) {
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let ws = &mut self.ws;
            let handshake = async move {
                if ws.close(Some(frame)).await.is_ok() {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            };
            if tokio::time::timeout(self.gw.cfg.close_timeout, handshake)
                .await
                .is_err()
            {
                counter!("connect_gateway_close_timeouts_total").increment(1);
            }
        }
        info!(user = %self.user, conn = %self.conn, "disconnected");
    }
}
