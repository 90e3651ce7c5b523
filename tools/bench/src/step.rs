//! `connect-bench step`: messaging's step alone, over the memory ports (no I/O). Batches of
//! direct sends go through `MessagingStep::prepare` (dedupe, authorize, sequence, store, log,
//! route), and the run prints messages/s. Its use is a figure that does not move with the
//! machine's noise: instructions per message under callgrind, from two runs whose difference
//! leaves out the start-up:
//!
//! ```sh
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/connect-bench step --messages 2000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/connect-bench step --messages 12000
//! # (Ir of the second − Ir of the first) / 10,000 = instructions per message
//! ```

use std::sync::Arc;
use std::time::Instant;

use connect_core::memory::Memory;
use connect_core::messaging::MessagingStep;
use connect_core::model::{ReplyTo, Session, SessionRoute, Submission};
use connect_core::ports::SessionRegistry;
use connect_protocol::{ClientMsgId, ConversationId, UserId};

#[derive(clap::Args)]
pub struct StepRun {
    /// Sends in all.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Sends per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Pairs of users (each recipient online on one of two gateway slots).
    #[arg(long, default_value_t = 50)]
    pairs: usize,
}

pub async fn run(run: StepRun) -> anyhow::Result<()> {
    let mem = Arc::new(Memory::default());
    let pairs = run.pairs.max(1);
    let senders: Vec<UserId> = (0..pairs)
        .map(|i| UserId::parse(format!("a{i}")))
        .collect::<Result<_, _>>()?;
    let recipients: Vec<UserId> = (0..pairs)
        .map(|i| UserId::parse(format!("b{i}")))
        .collect::<Result<_, _>>()?;
    let sessions: Vec<Session> = recipients
        .iter()
        .enumerate()
        .map(|(i, user)| Session {
            user: user.clone(),
            route: SessionRoute {
                conn: format!("c{i}"),
                slot: (i % 2) as u32,
                gateway: format!("gw{}", i % 2),
                endpoint: String::new(),
                device: None,
            },
        })
        .collect();
    mem.upsert(&sessions).await?;
    let step = MessagingStep::new(mem.ports());
    let batch = run.batch.max(1);
    let started = Instant::now();
    let mut records = 0;
    for b in 0..run.messages.div_ceil(batch) {
        let subs: Vec<Submission> = (0..batch)
            .map(|k| {
                let i = (b * batch + k) % pairs;
                Ok(Submission {
                    conversation: ConversationId::direct(&senders[i], &recipients[i])?,
                    sender: senders[i].clone(),
                    id: ClientMsgId::parse(format!("m{b}x{k}"))?,
                    body: "a message of a realistic length, some forty bytes".into(),
                    reply: Some(ReplyTo {
                        conn: format!("s{i}"),
                        slot: ((i + 1) % 2) as u32,
                        region: None,
                    }),
                    event: None,
                    submitted_ms: 0,
                    device: None,
                    hops: 0,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let prepared = step.prepare(subs, connect_core::now_ms()).await;
        records += prepared.deliveries.len();
        std::hint::black_box(prepared);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "step: {} sends in batches of {batch} over the memory ports: {:.0} messages/s, {records} delivery records",
        run.messages,
        run.messages as f64 / secs
    );
    Ok(())
}
