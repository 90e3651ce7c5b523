//! `connect-bench inbox`: a user in N conversations (direct ones and groups) reads the first page
//! of their inbox (`GET /v1/conversations`) through the local HTTP API, C readers at once:
//! p50/p95/p99, pages/s and the CPU of each process of the stack meanwhile. The conversations are seeded
//! through the production adapters (the inbox table, the chat table, the group table), as
//! messaging and the group admin write them.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use connect_core::auth::TokenIssuer;
use connect_core::groups::{Group, GroupStore};
use connect_core::model::{Markers, StoredMessage};
use connect_core::ports::{ChatStore, Head, InboxIndex, InboxWrite};
use connect_protocol::{ClientMsgId, ConversationId, GroupId, UserId};

#[derive(Args)]
pub struct InboxRun {
    /// Conversations of the reading user.
    #[arg(long, default_value_t = 1000)]
    conversations: usize,
    /// How many of them are groups (the rest are direct).
    #[arg(long, default_value_t = 200)]
    groups: usize,
    #[arg(long, default_value_t = 2000)]
    reads: usize,
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Items per page (1..100).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    #[arg(long, default_value = "127.0.0.1:8090")]
    api: String,
    #[arg(long, default_value = ".local/pids")]
    pids: std::path::PathBuf,
    /// Then time each read a page makes, through the same adapters, one at a time (this many
    /// of each; 0: none).
    #[arg(long, default_value_t = 200)]
    stages: usize,
}

fn id(s: &str) -> UserId {
    UserId::parse(s).expect("a user id")
}

/// The reader's conversations, each with one message: direct ones and groups of two; heads and
/// markers as messaging writes them.
async fn seed(me: &str, run: &InboxRun, a: &Adapters) -> anyhow::Result<()> {
    let Adapters {
        chat,
        inbox,
        groups,
    } = a;
    let started = Instant::now();
    let mut messages = Vec::new();
    let mut write = InboxWrite::default();
    for i in 0..run.conversations {
        let peer = id(&format!("{me}-p{i:05}"));
        let conversation = if i < run.groups {
            let group = GroupId::parse(format!("g_{me}_{i:05}"))?;
            groups
                .create(
                    &Group {
                        group: group.clone(),
                        name: format!("Group {i}"),
                        owner: peer.clone(),
                        members: vec![id(me), peer.clone()],
                    },
                    connect_core::groups::Caps::UNBOUNDED,
                )
                .await?;
            ConversationId::group(group)
        } else {
            ConversationId::direct(&id(me), &peer)?
        };
        let ts = 1_763_800_000_000 + i as u64;
        let head = Head { seq: 1, ts };
        if conversation.group_id().is_none() {
            write.places.push((conversation.clone(), head));
        }
        write.heads.push((conversation.clone(), head));
        write.markers.push((
            peer.clone(),
            conversation.clone(),
            Markers {
                read: 1,
                delivered: 1,
                ts,
            },
        ));
        messages.push(StoredMessage {
            conversation,
            seq: 1,
            from: peer,
            id: ClientMsgId::parse("m1")?,
            body: format!("the last message of conversation {i}"),
            ts,
            event: None,
            mv: None,
            device: None,
        });
    }
    chat.put_batch(&messages).await?;
    inbox.write(&write).await?;
    println!(
        "seeded {} conversations ({} groups) in {:.1} s",
        run.conversations,
        run.groups,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The production adapters the API reads with.
struct Adapters {
    chat: connect_dynamo::DynamoChatStore,
    inbox: connect_dynamo::DynamoInbox,
    groups: connect_dynamo::DynamoGroups,
}

impl Adapters {
    async fn new() -> anyhow::Result<Self> {
        let dynamo = connect_dynamo::client(
            &connect_dynamo::DynamoConfig::from_settings(&connect_bench::settings())
                .map_err(anyhow::Error::msg)?,
        )
        .await;
        let tables = connect_dynamo::Tables::from_settings(&connect_bench::settings());
        Ok(Self {
            chat: connect_dynamo::DynamoChatStore::new(dynamo.clone(), &tables.chat, 16),
            inbox: connect_dynamo::DynamoInbox::new(dynamo.clone(), &tables),
            groups: connect_dynamo::DynamoGroups::new(dynamo, &tables.groups),
        })
    }
}

/// Each read of a first page, timed alone through the adapters (`n` of each, one at a time):
/// where a page's time goes.
async fn stages(me: &str, run: &InboxRun, a: &Adapters) -> anyhow::Result<()> {
    use connect_core::ports::ReadMarkers;
    let me = id(me);
    let recent = a.inbox.recent(&me, None, run.limit + 1).await?;
    let memberships = a.groups.memberships_of(&me).await?;
    let groups: Vec<ConversationId> = memberships
        .iter()
        .map(|m| ConversationId::group(m.group.clone()))
        .collect();
    let page: Vec<ConversationId> = recent
        .iter()
        .take(run.limit)
        .map(|(c, _)| c.clone())
        .collect();
    let lasts: Vec<(ConversationId, u64)> = recent
        .iter()
        .take(run.limit)
        .map(|(c, h)| (c.clone(), h.seq))
        .collect();
    let markers: Vec<(UserId, ConversationId)> =
        page.iter().map(|c| (me.clone(), c.clone())).collect();
    let names: Vec<GroupId> = memberships
        .iter()
        .take(run.limit.min(memberships.len()))
        .map(|m| m.group.clone())
        .collect();
    println!(
        "where a first page's time goes: each read alone, {} times, one at a time (the page runs \
         the first two side by side, then the rest side by side)",
        run.stages
    );
    macro_rules! stage {
        ($name:expr, $call:expr) => {{
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for _ in 0..run.stages {
                let t = Instant::now();
                $call.await?;
                h.record((t.elapsed().as_micros() as u64).max(1))?;
            }
            println!(
                "  {:<58} p50 {:>6.2} ms  p99 {:>6.2} ms",
                $name,
                crate::ms(&h, 0.5),
                crate::ms(&h, 0.99)
            );
        }};
    }
    stage!(
        format!("recency index query ({} direct)", run.limit + 1),
        a.inbox.recent(&me, None, run.limit + 1)
    );
    stage!(
        format!("memberships ({} groups)", groups.len()),
        a.groups.memberships_of(&me)
    );
    stage!(
        format!("group heads ({})", groups.len()),
        a.inbox.heads(&groups)
    );
    stage!(
        format!("markers ({})", markers.len()),
        a.inbox.get(&markers)
    );
    stage!(
        format!("direct heads, consistent ({})", page.len()),
        a.inbox.heads(&page)
    );
    stage!(
        format!("last messages ({})", lasts.len()),
        a.chat.get_many(&lasts)
    );
    stage!(
        format!("group names ({})", names.len()),
        a.groups.summaries(&names)
    );
    Ok(())
}

pub async fn inbox(issuer: &TokenIssuer, run: InboxRun) -> anyhow::Result<()> {
    let me = crate::unique("inbox");
    let adapters = Adapters::new().await?;
    seed(&me, &run, &adapters).await?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let token = issuer.mint(&me, 3600);
    let concurrency = run.concurrency.max(1);
    let per = (run.warmup + run.reads).div_ceil(concurrency);
    let warm_per = run.warmup / concurrency;
    let mut usage = None;
    let mut tasks = Vec::new();
    let (warm_tx, warm_rx) = tokio::sync::watch::channel(0usize);
    for _ in 0..concurrency {
        let (client, token, api, limit) =
            (client.clone(), token.clone(), run.api.clone(), run.limit);
        let (warm_tx, want) = (warm_tx.clone(), run.conversations.min(limit));
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for i in 0..per {
                if i == warm_per {
                    warm_tx.send_modify(|n| *n += 1);
                }
                let uri = format!("http://{api}/v1/conversations?limit={limit}");
                let (page, us) = crate::timed_get(&client, uri, &token).await?;
                let got = page["conversations"].as_array().map_or(0, Vec::len);
                if got != want {
                    bail!("a page of {got} conversations, not {want}");
                }
                if i >= warm_per {
                    h.record(us.max(1))?;
                }
            }
            anyhow::Ok(h)
        }));
    }
    // Measured from when every reader is past its warm-up.
    let mut warm_rx = warm_rx;
    let _ = tokio::time::timeout(
        Duration::from_secs(600),
        warm_rx.wait_for(|n| *n == concurrency),
    )
    .await;
    let started = Instant::now();
    usage.get_or_insert_with(|| connect_bench::procs::Usage::start(&run.pids));
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        all.add(&t.await??)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = all.len();
    println!(
        "inbox: {n} measured first pages (limit {}) of a user in {} conversations ({} groups), {concurrency} concurrent: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} pages/s",
        run.limit,
        run.conversations,
        run.groups,
        crate::ms(&all, 0.5),
        crate::ms(&all, 0.95),
        crate::ms(&all, 0.99),
        all.max() as f64 / 1000.0,
        n as f64 / secs
    );
    if let Some(usage) = usage {
        usage.stop().print(secs);
    }
    if run.stages > 0 {
        stages(&me, &run, &adapters).await?;
    }
    Ok(())
}
