//! `connect`, the command-line client, run as a user runs it against the stack: two terminals
//! chatting across the gateways (lines like `alice → bob: hi`), the script commands with and
//! without `--json`, and clear errors.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::private::binary;

fn connect(args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("connect"));
    cmd.args(args)
        .env("CONNECT_API", format!("http://{}", api_addr()))
        .env("CONNECT_GATEWAY", &gateways()[0])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `connect …` to the end: (exit success, stdout, stderr).
async fn run(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::time::timeout(Duration::from_secs(60), connect(args).output())
        .await
        .with_context(|| format!("connect {args:?} did not finish"))??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn run_ok(args: &[&str]) -> anyhow::Result<String> {
    let (ok, out, err) = run(args).await?;
    anyhow::ensure!(ok, "connect {args:?} failed: {err}");
    Ok(out)
}

/// Reads a child's lines until one contains `text`.
async fn line_with(
    lines: &mut tokio::io::Lines<BufReader<impl tokio::io::AsyncRead + Unpin>>,
    text: &str,
) -> anyhow::Result<String> {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(text) {
                return anyhow::Ok(line);
            }
        }
        bail!("ended without a line containing {text:?}")
    })
    .await;
    found.with_context(|| format!("no line containing {text:?} in {WAIT:?}"))?
}

fn chat(user: &str, gateway: &str) -> anyhow::Result<Child> {
    Ok(connect(&["chat", user, "--gateway", gateway])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

#[tokio::test]
async fn two_terminals_chat_in_lines_across_the_gateways() -> anyhow::Result<()> {
    let (alice, bob) = (user("alice"), user("bob"));
    let gws = gateways();
    let mut b = chat(&bob, &gws[1])?;
    let mut b_err = BufReader::new(b.stderr.take().expect("stderr")).lines();
    let mut b_out = BufReader::new(b.stdout.take().expect("stdout")).lines();
    let mut b_in = b.stdin.take().expect("stdin");
    line_with(&mut b_err, "connected as").await?;

    let mut a = chat(&alice, &gws[0])?;
    let mut a_err = BufReader::new(a.stderr.take().expect("stderr")).lines();
    let mut a_out = BufReader::new(a.stdout.take().expect("stdout")).lines();
    let mut a_in = a.stdin.take().expect("stdin");
    line_with(&mut a_err, "connected as").await?;
    a_in.write_all(format!("/to {bob}\nhello from the terminal\n").as_bytes())
        .await?;
    // Alice sees her line once it is accepted; bob sees it arrive.
    let mine = line_with(&mut a_out, "hello from the terminal").await?;
    assert!(
        mine.ends_with(&format!("{alice} → {bob}: hello from the terminal")),
        "{mine}"
    );
    let theirs = line_with(&mut b_out, "hello from the terminal").await?;
    assert!(
        theirs.ends_with(&format!("{alice} → {bob}: hello from the terminal")),
        "{theirs}"
    );
    // A reply with the one-line form, and a mistake that gets a clear answer.
    b_in.write_all(format!("/nonsense\n@{alice} hi back\n").as_bytes())
        .await?;
    line_with(&mut b_err, "no command /nonsense").await?;
    let reply = line_with(&mut a_out, "hi back").await?;
    assert!(
        reply.ends_with(&format!("{bob} → {alice}: hi back")),
        "{reply}"
    );
    // Typing: a burst of three (over 2 s) is printed once, before the message that ends it.
    let mut typist = Client::connect(&gws[0], &alice).await?;
    let typing = json!({"type":"typing","conversation":dm(&alice, &bob)}).to_string();
    for _ in 0..3 {
        typist.send_raw(&typing).await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    typist.close().await;
    a_in.write_all(b"and another\n").await?;
    let mut shown = Vec::new();
    loop {
        let line = line_with(&mut b_out, "").await?;
        if line.contains("and another") {
            break;
        }
        if line.starts_with("* ") {
            shown.push(line);
        }
    }
    assert_eq!(
        shown,
        vec![format!("* {alice} is typing…")],
        "one line for a burst of three"
    );
    // /who: alice's terminal is connected, so she is online.
    b_in.write_all(format!("/to {alice}\n/who\n").as_bytes())
        .await?;
    line_with(&mut b_out, &format!("* {alice}: online")).await?;
    // /history in the terminal reads the HTTP API.
    a_in.write_all(b"/history 5\n").await?;
    line_with(&mut a_out, &format!("{bob} → {alice}: hi back")).await?;
    // Ctrl-D: each quits once its sends are answered and its acks are out.
    drop(a_in);
    drop(b_in);
    for (who, child) in [("alice", &mut a), ("bob", &mut b)] {
        let status = tokio::time::timeout(WAIT, child.wait()).await??;
        assert!(status.success(), "{who}'s chat exited with {status}");
    }
    // Bob's terminal marked what it printed as read (which acks it for his device): once
    // messaging has taken the read, his read marker is at alice's message and his next
    // connection gets nothing of it again.
    let conversation = dm(&alice, &bob);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = api_get(
            &format!("/v1/conversations/{conversation}/receipts"),
            Some(&bob),
        )
        .await?;
        let read = body["receipts"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["user"] == bob.as_str()))
            .and_then(|r| r["read"].as_u64());
        if read >= Some(1) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "bob's read never landed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut again = Client::connect(&gws[0], &bob).await?;
    again.expect_nothing_fresh(Duration::from_secs(2)).await?;
    // `connect inbox`: the conversation, nothing unread for bob (he read it), and for alice her
    // own last message is read too.
    let listed = run_ok(&["inbox", &bob]).await?;
    let row = listed
        .lines()
        .find(|l| l.contains(&format!("@{alice}")))
        .unwrap_or_default();
    assert!(row.starts_with("    "), "nothing unread: {listed:?}");
    assert!(
        row.ends_with(&format!("{alice} → {bob}: and another")),
        "{listed:?}"
    );
    let json: Value = serde_json::from_str(&run_ok(&["inbox", &alice, "--json"]).await?)?;
    assert_eq!(
        json["conversations"][0]["conversation"],
        conversation.as_str()
    );
    assert_eq!(json["conversations"][0]["unread"], 0, "{json}");
    Ok(())
}

#[tokio::test]
async fn the_script_commands_send_read_and_manage_groups() -> anyhow::Result<()> {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    // token: a token that verifies as the user.
    let token = run_ok(&["token", &alice]).await?;
    let verified = connect_core::auth::TokenVerifier::new(&connect_core::auth::JwtSecret::new(
        std::env::var("CONNECT_JWT_SECRET").ok(),
        false,
    )?)
    .verify(token.trim())?;
    assert_eq!(verified.as_str(), alice);

    // send: text, then --json (the `accepted` frame); the same --id again is the same message.
    let out = run_ok(&["send", &alice, "--to", &bob, "first", "words"]).await?;
    assert_eq!(out.trim(), format!("accepted {} seq 1", dm(&alice, &bob)));
    let out = run_ok(&[
        "send", &alice, "--to", &bob, "--id", "script-2", "--json", "second",
    ])
    .await?;
    let accepted: Value = serde_json::from_str(out.trim())?;
    assert_eq!(
        (accepted["type"].as_str(), accepted["seq"].as_u64()),
        (Some("accepted"), Some(2))
    );
    let out = run_ok(&[
        "send",
        &alice,
        "--to",
        &bob,
        "--id",
        "script-2",
        "--json",
        "second again",
    ])
    .await?;
    let again: Value = serde_json::from_str(out.trim())?;
    assert_eq!(again["seq"], 2);

    // history: as lines, and as the API's JSON.
    let out = run_ok(&["history", &bob, &format!("@{alice}")]).await?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with(&format!("{alice} → {bob}: first words")),
        "{out}"
    );
    assert!(
        lines[1].ends_with(&format!("{alice} → {bob}: second")),
        "{out}"
    );
    let out = run_ok(&[
        "history",
        &alice,
        &dm(&alice, &bob),
        "--after",
        "1",
        "--json",
    ])
    .await?;
    let page: Value = serde_json::from_str(out.trim())?;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));

    // groups: create, list, add, show, send to it, remove.
    let out = run_ok(&["groups", &alice, "create", "Trip", &bob, "--json"]).await?;
    let group: Value = serde_json::from_str(out.trim())?;
    let g = group["group"].as_str().expect("group id").to_owned();
    let out = run_ok(&["groups", &bob, "list"]).await?;
    assert!(out.contains(&g) && out.contains("Trip"), "{out}");
    run_ok(&["groups", &bob, "add", &g, &carol]).await?;
    let out = run_ok(&["groups", &carol, "show", &g]).await?;
    assert!(
        out.contains(&format!("owner {alice}")) && out.contains("3 members"),
        "{out}"
    );
    let out = run_ok(&["send", &carol, "--group", &g, "hello trip"]).await?;
    assert!(
        out.starts_with(&format!("accepted group:{g} seq ")),
        "{out}"
    );
    // The membership change's own message comes through the group table's stream, a moment
    // after the admin call: read until it is there.
    let deadline = tokio::time::Instant::now() + WAIT;
    let out = loop {
        let out = run_ok(&["history", &alice, &format!("#{g}")]).await?;
        if out.contains(&format!("* {bob} added {carol} to #Trip"))
            || tokio::time::Instant::now() > deadline
        {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        out.contains(&format!("{carol} → #Trip: hello trip")),
        "{out}"
    );
    assert!(
        out.contains(&format!("* {bob} added {carol} to #Trip")),
        "{out}"
    );
    assert!(out.contains(&format!("* {alice} created #Trip")), "{out}");
    let out = run_ok(&["groups", &alice, "remove", &g, &carol]).await?;
    assert_eq!(out.trim(), format!("removed {carol} from {g}"));
    Ok(())
}

#[tokio::test]
async fn mistakes_get_clear_errors_and_help_is_everywhere() -> anyhow::Result<()> {
    let alice = user("alice");
    let (ok, _, err) = run(&["send", &alice, "--to", "b b", "x"]).await?;
    assert!(!ok && err.contains("bad_request"), "{err}");
    let (ok, _, err) = run(&["send", "no way", "--to", "bob", "x"]).await?;
    assert!(!ok && err.contains("bad user id"), "{err}");
    let (ok, _, err) = run(&["history", &alice, "#g_nosuchgroup"]).await?;
    assert!(!ok && (err.contains("403") || err.contains("404")), "{err}");
    let (ok, _, err) = run(&["groups", &alice, "show", "g_nosuchgroup"]).await?;
    assert!(
        !ok && err.contains("404") && err.contains("not_found"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "send",
        &alice,
        "--to",
        "bob",
        "--gateway",
        "127.0.0.1:9",
        "x",
    ])
    .await?;
    assert!(!ok && err.contains("cannot reach the gateway"), "{err}");
    let (ok, _, err) = run(&["send", &alice, "--to", "bob", "--token", "not-a-token", "x"]).await?;
    assert!(!ok && err.contains("401"), "{err}");
    for args in [
        vec!["--help"],
        vec!["chat", "--help"],
        vec!["send", "--help"],
        vec!["history", "--help"],
        vec!["groups", "--help"],
        vec!["groups", "create", "--help"],
        vec!["token", "--help"],
    ] {
        let out = run_ok(&args).await?;
        assert!(out.contains("Usage: connect"), "{args:?}: {out}");
    }
    // bench hands its arguments to the load generator.
    let out = run_ok(&["bench", "--help"]).await?;
    assert!(out.contains("--pairs") && out.contains("--rate"), "{out}");
    let (ok, _, _) = run(&["dance"]).await?;
    assert!(!ok);
    Ok(())
}

#[tokio::test]
async fn push_registration_from_the_command_line() -> anyhow::Result<()> {
    const P256DH: &str =
        "BPzEwyx3K81k__lbPNILGxDrKFcLmEGxWFSL5SalGvPUdvo8jkfuufU8yj1TFrSw0eR2i7mgMEIqY0Yj1U4Gxlo";
    const AUTH: &str = "AAECAwQFBgcICQoLDA0ODw";
    let bob = user("bob");
    let key = run_ok(&["push", "vapid", &bob]).await?;
    assert_eq!(
        key.trim(),
        connect_push::vapid::Vapid::development().public_key()
    );
    let web = |endpoint: &'static str| {
        vec![
            "push",
            "register",
            "--device",
            "phone",
            "--endpoint",
            endpoint,
            "--p256dh",
            P256DH,
            "--auth",
            AUTH,
        ]
    };
    let mut args = web("http://127.0.0.1:8095/notify/x");
    args.insert(2, &bob);
    assert_eq!(run_ok(&args).await?.trim(), "registered");
    assert_eq!(
        crate::push::registered(&bob, "phone")
            .await?
            .expect("registered")["endpoint"],
        "http://127.0.0.1:8095/notify/x"
    );
    let mut args = web("http://10.0.0.1/x");
    args.insert(2, &bob);
    let (ok, _, err) = run(&args).await?;
    assert!(!ok && err.contains("400"), "{err}");
    let (ok, _, err) = run(&["push", "register", &bob, "--device", "ipad"]).await?;
    assert!(!ok && err.contains("--apns"), "{err}");
    assert_eq!(
        run_ok(&["push", "register", &bob, "--device", "ipad", "--apns", "0a1b2c"])
            .await?
            .trim(),
        "registered"
    );
    assert_eq!(
        run_ok(&["push", "remove", &bob, "--device", "phone"])
            .await?
            .trim(),
        "removed"
    );
    assert_eq!(crate::push::registered(&bob, "phone").await?, None);
    Ok(())
}
