//! End-to-end tests across two regions (`make regions`: region a on the usual ports, region b
//! on 8180/8181 with its API on 8190, MirrorMaker 2 between their Kafkas, one DynamoDB Local
//! for the global tables). Run by `make test` (`scripts/stack.sh test-regions`).
//!
//! The failover test stops region b's messaging and moves its homes: it runs alone (it takes
//! [`GATE`] for writing, every other test for reading).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::{json, Value};
use tokio::sync::{OnceCell, RwLock};

use connect_e2e::helpers::{api_call_at, create_group, dm, user, Client};

const A: [&str; 2] = ["127.0.0.1:8080", "127.0.0.1:8081"];
const B: [&str; 2] = ["127.0.0.1:8180", "127.0.0.1:8181"];
const API_A: &str = "127.0.0.1:8090";
const API_B: &str = "127.0.0.1:8190";
/// Two MirrorMaker 2 hops (a send forwarded to its home, its answer replicated back) on a
/// shared 2-core machine running two stacks.
const CROSS: Duration = Duration::from_secs(30);

static GATE: RwLock<()> = RwLock::const_new(());
static READY: OnceCell<()> = OnceCell::const_new();

/// Waits (once per run) until MirrorMaker 2 carries records both ways: a send from region b
/// into a conversation homed in region a is answered, and delivered in region a. MirrorMaker 2
/// starts its tasks some seconds after the stack is up.
async fn replication_ready() -> anyhow::Result<()> {
    READY
        .get_or_try_init(|| async {
            let (x, y) = (user("warm_a"), user("warm_b"));
            let mut on_a = Client::connect(A[0], &x).await?;
            let mut on_b = Client::connect(B[0], &y).await?;
            on_a.send_accepted("w-0", &y, "home in a").await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut n = 0;
            loop {
                n += 1;
                on_b.send_to(&format!("w-{n}"), &x, "from b").await?;
                match on_b.next_within(Duration::from_secs(10)).await {
                    Ok(f) if f["type"] == "accepted" => break,
                    Ok(f) if f["type"] == "message" => continue,
                    Ok(f) if f["type"] == "error" => {}
                    Ok(f) => bail!("warm-up: unexpected {f}"),
                    Err(_) => {}
                }
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "MirrorMaker 2 did not carry a send from b to a and back within 120 s"
                );
            }
            Ok::<_, anyhow::Error>(())
        })
        .await
        .map(|_| ())
}

/// The next fresh frame that is not a group event, within [`CROSS`].
async fn next_cross(c: &mut Client) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + CROSS;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = c.next_within(left).await?;
        if f["type"] == "message" && f.get("event").is_some() {
            continue;
        }
        return Ok(f);
    }
}

/// Sends and waits for this send's `accepted` (resending with the same id on `unavailable`),
/// within [`CROSS`]; messages arriving meanwhile are returned too.
async fn send_cross(
    c: &mut Client,
    id: &str,
    target: Value,
    body: &str,
) -> anyhow::Result<(u64, Vec<Value>)> {
    let mut frame = json!({"type":"send","id":id,"body":body});
    for (k, v) in target.as_object().into_iter().flatten() {
        frame[k] = v.clone();
    }
    let mut others = Vec::new();
    let deadline = tokio::time::Instant::now() + CROSS;
    'send: loop {
        c.send_raw(&frame.to_string()).await?;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = c.next_within(left).await?;
            match f["type"].as_str() {
                Some("accepted") if f["id"] == id => {
                    let seq = f["seq"].as_u64().ok_or_else(|| anyhow!("no seq: {f}"))?;
                    return Ok((seq, others));
                }
                Some("error") if f["id"] == id && f["code"] == "unavailable" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue 'send;
                }
                Some("message") => others.push(f),
                _ => bail!("{}: expected accepted for {id}, got {f}", c.user),
            }
        }
    }
}

/// Waits until `c` gets `conversation`'s `group_created` event: a group's first seq is its
/// creation event (sequenced where the group was made), so the sends after it are the test's.
async fn created(c: &mut Client, conversation: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + CROSS;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = c
            .next_within(left)
            .await
            .with_context(|| format!("{}: no group_created in {conversation}", c.user))?;
        if f["conversation"] == conversation && f["event"]["kind"] == "group_created" {
            return Ok(());
        }
    }
}

/// `message` frames (not events) until `count` of `conversation` are in, as seq → (from, id).
async fn collect(
    c: &mut Client,
    conversation: &str,
    count: usize,
    mut have: BTreeMap<u64, (String, String)>,
) -> anyhow::Result<BTreeMap<u64, (String, String)>> {
    while have.len() < count {
        let f = next_cross(c)
            .await
            .with_context(|| format!("{} has {} of {count}", c.user, have.len()))?;
        if f["type"] != "message" || f["conversation"] != conversation {
            continue;
        }
        let seq = f["seq"].as_u64().ok_or_else(|| anyhow!("no seq: {f}"))?;
        let entry = (
            f["from"].as_str().unwrap_or_default().to_owned(),
            f["id"].as_str().unwrap_or_default().to_owned(),
        );
        if let Some(old) = have.insert(seq, entry.clone()) {
            ensure!(old == entry, "seq {seq} came as {old:?} and as {entry:?}");
        }
    }
    Ok(have)
}

fn messages_of(frames: &[Value], conversation: &str) -> BTreeMap<u64, (String, String)> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" && f["conversation"] == conversation)
        .filter(|f| f.get("event").is_none())
        .map(|f| {
            (
                f["seq"].as_u64().unwrap_or_default(),
                (
                    f["from"].as_str().unwrap_or_default().to_owned(),
                    f["id"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect()
}

/// The whole history of `conversation` through one region's API, as `reader`.
async fn history(api: &str, conversation: &str, reader: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = api_call_at(
            api,
            "GET",
            &format!("/v1/conversations/{conversation}/messages?after={after}&limit=100"),
            Some(reader),
            "",
        )
        .await?;
        ensure!(status == 200, "history from {api}: {status} {page}");
        let items = page["messages"].as_array().cloned().unwrap_or_default();
        after = items
            .last()
            .and_then(|m| m["seq"].as_u64())
            .unwrap_or(after);
        out.extend(items);
        if page["has_more"] != true {
            return Ok(out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_group_messages_cross_both_ways() -> anyhow::Result<()> {
    let _gate = GATE.read().await;
    replication_ready().await?;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut a = Client::connect(A[0], &alice).await?;
    let mut b = Client::connect(B[0], &bob).await?;
    let mut c = Client::connect(B[1], &carol).await?;
    let conv = dm(&alice, &bob);

    // Direct, homed in a (alice speaks first): bob in b gets it; bob's reply is forwarded home.
    let (s1, _) = send_cross(&mut a, "d-1", json!({"to": bob}), "hi from a").await?;
    let got = collect(&mut b, &conv, 1, BTreeMap::new()).await?;
    ensure!(
        got.get(&s1) == Some(&(alice.clone(), "d-1".into())),
        "bob got {got:?}"
    );
    let (s2, _) = send_cross(&mut b, "d-2", json!({"to": alice}), "hi from b").await?;
    ensure!(s2 == s1 + 1, "bob's reply got seq {s2} after {s1}");
    let got = collect(&mut a, &conv, 1, BTreeMap::new()).await?;
    ensure!(
        got.get(&s2) == Some(&(bob.clone(), "d-2".into())),
        "alice got {got:?}"
    );

    // A group made in a is homed there (its creation event is sequenced there): bob's and
    // carol's sends from b are forwarded to a, and everything reaches both regions.
    let group = create_group(&alice, &[&bob, &carol]).await?;
    let gconv = format!("group:{group}");
    created(&mut c, &gconv).await?;
    created(&mut b, &gconv).await?;
    created(&mut a, &gconv).await?;
    let (g1, early) = send_cross(&mut b, "g-1", json!({"group": group}), "b first").await?;
    let (g2, seen_a) = send_cross(&mut a, "g-2", json!({"group": group}), "then a").await?;
    ensure!(g2 == g1 + 1, "group seqs {g1}, {g2}");
    let want: BTreeMap<u64, (String, String)> = [
        (g1, (bob.clone(), "g-1".to_owned())),
        (g2, (alice.clone(), "g-2".to_owned())),
    ]
    .into();
    let at_a = collect(&mut a, &gconv, 1, messages_of(&seen_a, &gconv)).await?;
    ensure!(at_a.get(&g1) == want.get(&g1), "alice got {at_a:?}");
    let at_b = collect(&mut b, &gconv, 1, messages_of(&early, &gconv)).await?;
    ensure!(at_b.get(&g2) == want.get(&g2), "bob got {at_b:?}");
    let at_c = collect(&mut c, &gconv, 2, BTreeMap::new()).await?;
    ensure!(at_c == want, "carol (region b) got {at_c:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_regions_sending_at_once_see_one_gapless_order() -> anyhow::Result<()> {
    let _gate = GATE.read().await;
    replication_ready().await?;
    const EACH: usize = 15;
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let group = create_group(&alice, &[&bob, &carol, &dave]).await?;
    let gconv = format!("group:{group}");
    let mut a = Client::connect(A[0], &alice).await?;
    let mut b = Client::connect(B[0], &bob).await?;
    let mut c = Client::connect(A[1], &carol).await?;
    let mut d = Client::connect(B[1], &dave).await?;
    for client in [&mut a, &mut b, &mut c, &mut d] {
        created(client, &gconv).await?;
    }
    let sender = |mut client: Client, tag: &'static str| {
        let group = group.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut seen = Vec::new();
            for i in 0..EACH {
                let (seq, others) = send_cross(
                    &mut client,
                    &format!("{tag}-{i}"),
                    json!({"group": group}),
                    "both at once",
                )
                .await?;
                seqs.push(seq);
                seen.extend(others);
            }
            Ok::<_, anyhow::Error>((client, seqs, seen))
        })
    };
    let (ra, rb) = tokio::join!(sender(a, "a"), sender(b, "b"));
    let (a2, seqs_a, seen_a) = ra??;
    let (b2, seqs_b, seen_b) = rb??;
    a = a2;
    b = b2;
    let mut all: Vec<u64> = seqs_a.iter().chain(&seqs_b).copied().collect();
    all.sort();
    let first = all[0];
    let expected: Vec<u64> = (first..first + 2 * EACH as u64).collect();
    ensure!(
        all == expected,
        "accepted seqs are not one gapless run: {all:?}"
    );
    ensure!(
        seqs_a.windows(2).all(|w| w[0] < w[1]) && seqs_b.windows(2).all(|w| w[0] < w[1]),
        "a sender's own seqs went down: {seqs_a:?} {seqs_b:?}"
    );
    // Every member, in both regions, sees the same seq → message map.
    let n = 2 * EACH;
    let at_c = collect(&mut c, &gconv, n, BTreeMap::new()).await?;
    let at_d = collect(&mut d, &gconv, n, BTreeMap::new()).await?;
    let at_a = collect(&mut a, &gconv, EACH, messages_of(&seen_a, &gconv)).await?;
    let at_b = collect(&mut b, &gconv, EACH, messages_of(&seen_b, &gconv)).await?;
    ensure!(
        at_c == at_d,
        "carol (a) and dave (b) disagree:\n{at_c:?}\n{at_d:?}"
    );
    ensure!(
        at_c.keys().copied().collect::<Vec<_>>() == expected,
        "members saw {:?}",
        at_c.keys()
    );
    for (seq, msg) in at_a.iter().chain(&at_b) {
        ensure!(
            at_c.get(seq) == Some(msg),
            "seq {seq}: {msg:?} vs {:?}",
            at_c.get(seq)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_the_same_from_both_regions() -> anyhow::Result<()> {
    let _gate = GATE.read().await;
    replication_ready().await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(A[1], &alice).await?;
    let mut b = Client::connect(B[1], &bob).await?;
    for i in 0..5 {
        send_cross(&mut a, &format!("a-{i}"), json!({"to": bob}), "from a").await?;
        send_cross(&mut b, &format!("b-{i}"), json!({"to": alice}), "from b").await?;
    }
    let conv = dm(&alice, &bob);
    let from_a = history(API_A, &conv, &alice).await?;
    let from_b = history(API_B, &conv, &bob).await?;
    ensure!(from_a.len() == 10, "history from a: {from_a:?}");
    ensure!(
        from_a == from_b,
        "a and b disagree:\n{from_a:?}\n{from_b:?}"
    );
    let seqs: Vec<u64> = from_a.iter().filter_map(|m| m["seq"].as_u64()).collect();
    ensure!(seqs == (1..=10).collect::<Vec<_>>(), "seqs {seqs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_offline_in_a_reconnects_in_b_and_gets_what_it_missed() -> anyhow::Result<()> {
    let _gate = GATE.read().await;
    replication_ready().await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = dm(&alice, &bob);
    let mut a = Client::connect(A[0], &alice).await?;
    let mut phone = Client::connect_device(A[1], &bob, "phone").await?;
    let (s1, _) = send_cross(&mut a, "m-1", json!({"to": bob}), "one").await?;
    collect(&mut phone, &conv, 1, BTreeMap::new()).await?;
    phone.ack(&conv, s1).await?;
    // The ack reaches region b's cursors through MirrorMaker 2.
    let mut redis_b = redis::Client::open("redis://127.0.0.1:6480")?
        .get_multiplexed_async_connection()
        .await?;
    let key = format!("cur:{{{bob}}}:phone");
    let deadline = tokio::time::Instant::now() + CROSS;
    loop {
        let cursor: Option<u64> = redis::cmd("HGET")
            .arg(&key)
            .arg(&conv)
            .query_async(&mut redis_b)
            .await?;
        if cursor == Some(s1) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "bob's ack in a did not reach b's cursor (have {cursor:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phone.close().await;
    let (s2, _) = send_cross(&mut a, "m-2", json!({"to": bob}), "two").await?;
    let (s3, _) = send_cross(&mut a, "m-3", json!({"to": bob}), "three").await?;
    // Both are in region b's log once they have replicated; the phone comes back there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut phone = Client::connect_device(B[0], &bob, "phone").await?;
    let mut got = Vec::new();
    while got.len() < 2 {
        let f = next_cross(&mut phone)
            .await
            .with_context(|| format!("got {got:?}"))?;
        if f["type"] == "message" {
            got.push(f["seq"].as_u64().unwrap_or_default());
        }
    }
    ensure!(
        got == vec![s2, s3],
        "bob's phone in b got {got:?}, not [{s2}, {s3}] (it acked {s1} in a)"
    );
    Ok(())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Stops region b's messaging processes (SIGTERM, as ECS stops a task) and waits for them.
async fn stop_b_messaging() -> anyhow::Result<()> {
    for port in [8170, 8171] {
        let pid_file = root().join(format!(".local/region-b/pids/messaging-{port}.pid"));
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        let pid = pid.trim().to_owned();
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::process::Command::new("kill")
            .args(["-0", &pid])
            .status()
            .await?
            .success()
        {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "messaging {pid} did not stop"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn stack(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(root().join("scripts/stack.sh"))
        .args(args)
        .current_dir(root())
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "stack.sh {args:?} failed:\n{text}");
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_moves_region_bs_homes_to_a_and_seqs_jump_past_b() -> anyhow::Result<()> {
    let _gate = GATE.write().await;
    replication_ready().await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let conv = dm(&alice, &bob);
    let mut b = Client::connect(B[0], &bob).await?;
    let mut a = Client::connect(A[0], &alice).await?;
    // Homed in b: bob speaks first.
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(
            send_cross(&mut b, &format!("b-{i}"), json!({"to": alice}), "before")
                .await?
                .0,
        );
    }
    ensure!(
        before == vec![1, 2, 3],
        "seqs before the failover: {before:?}"
    );
    collect(&mut a, &conv, 3, BTreeMap::new()).await?;

    stop_b_messaging().await?;
    let moved = stack(&["move-homes", "b", "a"]).await?;
    ensure!(
        moved.contains(&conv),
        "move-homes did not move {conv}:\n{moved}"
    );

    // Sends keep working in a, with seqs past anything b could have allocated.
    let base = connect_dynamo::epoch_base(2);
    let (s1, _) = send_cross(&mut a, "a-1", json!({"to": bob}), "after").await?;
    let (s2, _) = send_cross(&mut a, "a-2", json!({"to": bob}), "after").await?;
    ensure!(
        s1 > base && s2 == s1 + 1,
        "seqs after the failover: {s1}, {s2} (epoch 2 starts past {base})"
    );
    // Bob, whose region has no messaging now, moves to a and gets them there.
    b.close().await;
    let mut b_in_a = Client::connect(A[1], &bob).await?;
    let got = collect(&mut b_in_a, &conv, 2, BTreeMap::new()).await?;
    ensure!(
        got.contains_key(&s1) && got.contains_key(&s2),
        "bob in a got {got:?}"
    );

    // Region b comes back: its sends are forwarded to the new home.
    stack(&["region-b", "up"]).await?;
    let mut b = Client::connect(B[0], &bob).await?;
    let (s3, _) = send_cross(&mut b, "b-after", json!({"to": alice}), "b is back").await?;
    ensure!(
        s3 == s2 + 1,
        "b's send after failover got {s3}, want {}",
        s2 + 1
    );

    let seqs: Vec<u64> = history(API_A, &conv, &alice)
        .await?
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    ensure!(seqs == vec![1, 2, 3, s1, s2, s3], "history seqs {seqs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_in_one_region_is_seen_in_the_other_and_online_anywhere_is_online(
) -> anyhow::Result<()> {
    let _gate = GATE.read().await;
    replication_ready().await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(A[0], &alice).await?;
    send_cross(&mut a, "hi", json!({"to": bob}), "hello").await?;
    a.send_raw(&json!({"type":"watch","users":[bob]}).to_string())
        .await?;
    ensure!(
        a.next_of("presence", CROSS).await? == json!({"type":"presence","user":bob,"online":false}),
        "bob was never seen"
    );

    // Bob connects in region b: alice, watching in region a, sees him online.
    let started = std::time::Instant::now();
    let in_b = Client::connect(B[0], &bob).await?;
    let f = a.next_of("presence", CROSS).await?;
    ensure!(
        f == json!({"type":"presence","user":bob,"online":true}),
        "got {f}"
    );
    println!(
        "online in b reached a watcher in a after {:?}",
        started.elapsed()
    );

    // He is online in a too, and leaves b: still online anywhere, so nothing changes for alice.
    let in_a = Client::connect(A[1], &bob).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    in_b.close().await;
    if let Ok(f) = a.next_of("presence", Duration::from_secs(9)).await {
        bail!("bob is still online in a, yet alice got {f}");
    }
    // He leaves a too: offline, with when he left.
    let left = connect_core::now_ms();
    in_a.close().await;
    let f = a.next_of("presence", CROSS).await?;
    ensure!(f["online"] == false, "got {f}");
    let seen = f["last_seen"].as_u64().context("last_seen")?;
    ensure!(
        seen + 1000 >= left && seen <= left + 1000,
        "last_seen {seen}, left at {left}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_in_one_region_reaches_the_peer_in_the_other() -> anyhow::Result<()> {
    let _gate = GATE.read().await;
    replication_ready().await?;
    let (alice, bob) = (user("alice"), user("bob"));
    let conversation = dm(&alice, &bob);
    let mut a = Client::connect(A[0], &alice).await?;
    let mut b = Client::connect(B[1], &bob).await?;
    let started = std::time::Instant::now();
    a.send_raw(&json!({"type":"typing","conversation":conversation}).to_string())
        .await?;
    let f = b
        .next_of("typing", CROSS)
        .await
        .context("bob in b got no typing")?;
    ensure!(
        f == json!({"type":"typing","conversation":conversation,"user":alice}),
        "got {f}"
    );
    println!("typing in a reached b after {:?}", started.elapsed());
    // Nothing comes back to alice (her own typing, from the other region).
    if let Ok(f) = a.next_within(Duration::from_secs(2)).await {
        ensure!(f["type"] != "typing", "alice got {f}");
    }
    Ok(())
}
