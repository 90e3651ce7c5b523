//! `connect`: the command-line client of Connect Chat.
//!
//! ```text
//! connect chat alice                      # chat in the terminal: `/to bob`, then type
//! connect chat bob --gateway 127.0.0.1:8081
//! connect send alice --to bob "hi"        # for scripts; --json prints the answer frame
//! connect history bob @alice --limit 20
//! connect groups alice create Trip bob carol
//! connect token alice                     # a development JWT for any other client
//! connect bench -- --pairs 10 --rate 100  # the load generator (connect-loadgen)
//! ```
//! Tokens are minted with `CONNECT_JWT_SECRET` (the local stack's development secret when
//! unset), or given as they are with `--token` / `CONNECT_TOKEN`.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use connect_cli::chat::{self, Input, Target};
use connect_cli::client::{self, Ws};
use connect_core::auth::{JwtSecret, TokenIssuer};
use connect_protocol::{ConversationId, UserId};

/// A send not answered yet.
struct Pending {
    frame: String,
    target: Target,
    body: String,
    /// Retries after `unavailable` / `rate_limited` (each waits twice as long, up to 8 s).
    tries: u32,
}

#[derive(Parser)]
#[command(
    name = "connect",
    version,
    about = "The command-line client of Connect Chat",
    after_help = "Try it: `make up`, then `connect chat alice` and `connect chat bob --gateway 127.0.0.1:8081` in two terminals."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Gateway `host:port` (or a ws:// / wss:// URL).
    #[arg(
        long,
        global = true,
        env = "CONNECT_GATEWAY",
        default_value = "127.0.0.1:8080"
    )]
    gateway: String,
    /// The HTTP API's base URL.
    #[arg(
        long,
        global = true,
        env = "CONNECT_API",
        default_value = "http://127.0.0.1:8090"
    )]
    api: String,
    /// HS256 secret to mint tokens with (the local stack's development secret when unset).
    #[arg(
        long,
        global = true,
        env = "CONNECT_JWT_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// Use this token instead of minting one (its `sub` is the user).
    #[arg(long, global = true, env = "CONNECT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON (the frames and API bodies as they are) instead of chat lines.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Print a token for a user (HS256, signed with the secret).
    Token {
        user: String,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
    },
    /// Chat in the terminal as a user: lines like `alice → bob: hi`; `/help` lists the commands.
    Chat {
        user: String,
        /// Your device (each device gets what it has not acked; the default device without it).
        #[arg(long)]
        device: Option<String>,
        /// Start talking to this user (`bob`) or group (`#g_7f3a`, `#Trip`).
        #[arg(long)]
        to: Option<String>,
    },
    /// Send one message and wait until it is accepted (exit status 1 if refused).
    Send {
        user: String,
        /// To a user.
        #[arg(long, conflicts_with = "group", required_unless_present = "group")]
        to: Option<String>,
        /// To a group (its id).
        #[arg(long)]
        group: Option<String>,
        /// The message's id (retrying with the same id never sends twice); random when unset.
        #[arg(long)]
        id: Option<String>,
        /// The text.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Read a conversation's history: `@bob` (or `bob`, `dm:alice:bob`), `#g_7f3a` or `group:g_7f3a`.
    History {
        user: String,
        conversation: String,
        /// Only messages above this seq.
        #[arg(long)]
        after: Option<u64>,
        /// Only messages below this seq.
        #[arg(long)]
        before: Option<u64>,
        /// At most this many (1..100).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
    },
    /// The user's conversations, newest first: unread count, who or which group, the last
    /// message.
    Inbox {
        user: String,
        /// At most this many (1..100).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        /// Where the previous page ended (printed after it).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Push: the server's VAPID key, a device's registration, its removal.
    Push {
        #[command(subcommand)]
        action: PushAction,
    },
    /// Groups: list, show, create, add, remove.
    Groups {
        user: String,
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Run the load generator (connect-loadgen) with these arguments; `connect bench --help`
    /// prints its options.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum PushAction {
    /// The VAPID public key a browser subscribes with (`pushManager.subscribe`).
    Vapid { user: String },
    /// Register a device for push, replacing its earlier registration: a Web Push
    /// subscription (`--endpoint --p256dh --auth`) or an APNs or FCM token.
    Register {
        user: String,
        /// The device's id (as on `?device=`).
        #[arg(long)]
        device: String,
        /// A Web Push subscription's endpoint (`https://…`).
        #[arg(long, requires_all = ["p256dh", "auth"], conflicts_with_all = ["apns", "fcm"])]
        endpoint: Option<String>,
        /// The subscription's `keys.p256dh` (base64url).
        #[arg(long, requires = "endpoint")]
        p256dh: Option<String>,
        /// The subscription's `keys.auth` (base64url).
        #[arg(long, requires = "endpoint")]
        auth: Option<String>,
        /// An APNs device token.
        #[arg(long, conflicts_with = "fcm")]
        apns: Option<String>,
        /// An FCM registration token.
        #[arg(long)]
        fcm: Option<String>,
    },
    /// Remove a device's registration.
    Remove {
        user: String,
        #[arg(long)]
        device: String,
    },
}

#[derive(Subcommand)]
enum GroupAction {
    /// The user's groups.
    List,
    /// One group: name, owner, members.
    Show { group: String },
    /// A new group, with the user as owner.
    Create {
        name: String,
        /// Other members.
        members: Vec<String>,
    },
    /// Add a member (any member may).
    Add { group: String, member: String },
    /// Remove a member (the owner removes anyone; a member removes themselves).
    Remove { group: String, member: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connect: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = cli.common;
    match cli.command {
        Command::Token { user, ttl } => {
            println!("{}", mint(&c, &checked_user(&user)?, ttl)?);
            Ok(())
        }
        Command::Chat { user, device, to } => {
            chat_loop(&c, &checked_user(&user)?, device, to).await
        }
        Command::Send {
            user,
            to,
            group,
            id,
            text,
        } => {
            let user = checked_user(&user)?;
            let target = match (to, group) {
                (Some(to), _) => Target::User(to),
                (None, Some(g)) => Target::Group(g),
                (None, None) => bail!("give --to <user> or --group <group>"),
            };
            send_once(&c, &user, target, id, text.join(" ")).await
        }
        Command::History {
            user,
            conversation,
            after,
            before,
            limit,
        } => {
            let user = checked_user(&user)?;
            let conversation = conversation_of(&user, &conversation)?;
            let mut query = format!("limit={limit}");
            if let Some(a) = after {
                query.push_str(&format!("&after={a}"));
            }
            if let Some(b) = before {
                query.push_str(&format!("&before={b}"));
            }
            let token = token_for(&c, &user)?;
            let url = messages_url(&c.api, &conversation.to_string(), &query);
            let page = client::api_ok(&token, "GET", &url, None).await?;
            if c.json {
                println!("{page}");
                return Ok(());
            }
            let names = group_names(&c, &token).await;
            for m in page["messages"].as_array().into_iter().flatten() {
                println!("{}", chat::line(m, &names));
            }
            if page["has_more"].as_bool() == Some(true) {
                eprintln!(
                    "(more: --{} {})",
                    if after.is_some() { "after" } else { "before" },
                    page["messages"]
                        .as_array()
                        .and_then(|m| if after.is_some() { m.last() } else { m.first() })
                        .and_then(|m| m["seq"].as_u64())
                        .unwrap_or(0)
                );
            }
            Ok(())
        }
        Command::Inbox {
            user,
            limit,
            cursor,
        } => {
            let user = checked_user(&user)?;
            let token = token_for(&c, &user)?;
            let mut url = format!("{}/v1/conversations?limit={limit}", c.api);
            if let Some(cursor) = cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let page = client::api_ok(&token, "GET", &url, None).await?;
            if c.json {
                println!("{page}");
                return Ok(());
            }
            for item in page["conversations"].as_array().into_iter().flatten() {
                println!("{}", chat::inbox_line(item));
            }
            if let Some(next) = page["next"].as_str() {
                eprintln!("(more: --cursor {next})");
            }
            Ok(())
        }
        Command::Groups { user, action } => groups(&c, &checked_user(&user)?, action).await,
        Command::Push { action } => push(&c, action).await,
        Command::Bench { args } => bench(args),
    }
}

/// `connect push …`: the push routes of the HTTP API.
async fn push(c: &Common, action: PushAction) -> anyhow::Result<()> {
    let (user, method, device, body) = match action {
        PushAction::Vapid { user } => {
            let token = token_for(c, &checked_user(&user)?)?;
            let key =
                client::api_ok(&token, "GET", &format!("{}/v1/push/vapid", c.api), None).await?;
            println!("{}", key["public_key"].as_str().unwrap_or_default());
            return Ok(());
        }
        PushAction::Register {
            user,
            device,
            endpoint,
            p256dh,
            auth,
            apns,
            fcm,
        } => {
            let body = match (endpoint, apns, fcm) {
                (Some(endpoint), _, _) => serde_json::json!({
                    "kind": "webpush", "endpoint": endpoint,
                    "keys": {"p256dh": p256dh, "auth": auth},
                }),
                (None, Some(token), _) => serde_json::json!({"kind": "apns", "token": token}),
                (None, None, Some(token)) => serde_json::json!({"kind": "fcm", "token": token}),
                (None, None, None) => bail!("give --endpoint --p256dh --auth, --apns or --fcm"),
            };
            (user, "PUT", device, Some(body.to_string()))
        }
        PushAction::Remove { user, device } => (user, "DELETE", device, None),
    };
    let token = token_for(c, &checked_user(&user)?)?;
    let url = format!("{}/v1/devices/{device}/push", c.api);
    let (status, answer) = client::api(&token, method, &url, body).await?;
    if status != 204 {
        bail!("{method} {url}: {status} {answer}");
    }
    println!(
        "{}",
        if method == "PUT" {
            "registered"
        } else {
            "removed"
        }
    );
    Ok(())
}

fn checked_user(user: &str) -> anyhow::Result<String> {
    UserId::parse(user)
        .map(|u| u.to_string())
        .map_err(|e| anyhow::anyhow!("bad user id {user:?}: {e}"))
}

fn mint(c: &Common, user: &str, ttl: u64) -> anyhow::Result<String> {
    let secret = JwtSecret::new(c.secret.clone(), false).context("CONNECT_JWT_SECRET")?;
    Ok(TokenIssuer::new(&secret).mint(user, ttl))
}

fn token_for(c: &Common, user: &str) -> anyhow::Result<String> {
    match &c.token {
        Some(t) => Ok(t.clone()),
        None => mint(c, user, 3600),
    }
}

/// The conversation id a user means: `@bob`/`bob` → `dm:…`, `#g`/`group:g` → `group:g`, or an
/// id as it is.
fn conversation_of(me: &str, text: &str) -> anyhow::Result<ConversationId> {
    let target =
        Target::parse(text, me).context("name a conversation: @user, #group, dm:a:b or group:g")?;
    target
        .conversation(me)
        .map_err(|e| anyhow::anyhow!("{text:?}: {e}"))
}

/// A page of a conversation's history on the HTTP API.
fn messages_url(api: &str, conversation: &str, query: &str) -> String {
    format!("{api}/v1/conversations/{conversation}/messages?{query}")
}

/// Group id → name, for the user's groups (empty when the API cannot be reached).
async fn group_names(c: &Common, token: &str) -> HashMap<String, String> {
    let Ok(list) = client::api_ok(token, "GET", &format!("{}/v1/groups", c.api), None).await else {
        return HashMap::new();
    };
    list["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| {
            Some((
                g["group"].as_str()?.to_owned(),
                g["name"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

async fn groups(c: &Common, user: &str, action: GroupAction) -> anyhow::Result<()> {
    let token = token_for(c, user)?;
    let base = format!("{}/v1/groups", c.api);
    let (method, url, body) = match &action {
        GroupAction::List => ("GET", base, None),
        GroupAction::Show { group } => ("GET", format!("{base}/{group}"), None),
        GroupAction::Create { name, members } => (
            "POST",
            base,
            Some(json!({"name": name, "members": members}).to_string()),
        ),
        GroupAction::Add { group, member } => (
            "POST",
            format!("{base}/{group}/members"),
            Some(json!({"user": member}).to_string()),
        ),
        GroupAction::Remove { group, member } => {
            ("DELETE", format!("{base}/{group}/members/{member}"), None)
        }
    };
    let answer = client::api_ok(&token, method, &url, body).await?;
    if c.json {
        if !answer.is_null() {
            println!("{answer}");
        }
        return Ok(());
    }
    // The list has id, name and owner; a group itself also its members.
    let describe = |g: &Value| {
        let head = format!(
            "{}  {}  (owner {}",
            g["group"].as_str().unwrap_or("?"),
            g["name"].as_str().unwrap_or(""),
            g["owner"].as_str().unwrap_or("?"),
        );
        match g["members"].as_array() {
            Some(members) => {
                let names: Vec<&str> = members.iter().filter_map(Value::as_str).collect();
                format!("{head}; {} members: {})", names.len(), names.join(", "))
            }
            None => format!("{head})"),
        }
    };
    match action {
        GroupAction::List => {
            for g in answer["groups"].as_array().into_iter().flatten() {
                println!("{}", describe(g));
            }
        }
        GroupAction::Remove { group, member } => println!("removed {member} from {group}"),
        _ => println!("{}", describe(&answer)),
    }
    Ok(())
}

/// Opens a connection and waits for its `hello`.
async fn connect_ws(c: &Common, user: &str, device: Option<&str>) -> anyhow::Result<(Ws, Value)> {
    let token = token_for(c, user)?;
    let mut ws = client::open(&c.gateway, &token, device).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Err(_) => bail!("no hello from {} in 10 s", c.gateway),
            Ok(Some(Ok(Message::Text(t)))) => {
                let f: Value = serde_json::from_str(&t)?;
                if f["type"] == "hello" {
                    return Ok((ws, f));
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => bail!("the gateway closed the connection: {f:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => bail!("the gateway closed the connection"),
        }
    }
}

fn send_frame(id: &str, target: &Target, body: &str) -> Value {
    match target {
        Target::User(u) => json!({"type":"send","id":id,"to":u,"body":body}),
        Target::Group(g) => json!({"type":"send","id":id,"group":g,"body":body}),
    }
}

fn new_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Codes a send is retried after, with the same id.
fn retried(code: &str) -> bool {
    matches!(code, "unavailable" | "rate_limited")
}

async fn send_once(
    c: &Common,
    user: &str,
    target: Target,
    id: Option<String>,
    body: String,
) -> anyhow::Result<()> {
    let id = id.unwrap_or_else(|| new_id("cli"));
    let frame = send_frame(&id, &target, &body).to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(200);
    // A retryable refusal: again with the same id on the same connection; a lost connection:
    // again on a new one. Until the deadline.
    let mut open: Option<Ws> = None;
    loop {
        let ws = match &mut open {
            Some(ws) => ws,
            None => open.insert(connect_ws(c, user, None).await?.0),
        };
        ws.send(Message::Text(frame.clone().into())).await?;
        let answer = loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => bail!("no answer to {id} in 30 s"),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let f: Value = serde_json::from_str(&t)?;
                    if f["id"] == id.as_str() && (f["type"] == "accepted" || f["type"] == "error") {
                        break Some(f);
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => break None,
            }
        };
        match answer {
            Some(f) if f["type"] == "accepted" => {
                if c.json {
                    println!("{f}");
                } else {
                    println!(
                        "accepted {} seq {}",
                        f["conversation"].as_str().unwrap_or("?"),
                        f["seq"]
                    );
                }
                let _ = ws.close(None).await;
                return Ok(());
            }
            Some(f) if !retried(f["code"].as_str().unwrap_or("")) => {
                if c.json {
                    println!("{f}");
                }
                bail!(
                    "{}: {}",
                    f["code"].as_str().unwrap_or("error"),
                    f["message"].as_str().unwrap_or("")
                );
            }
            Some(_) => {}
            None => open = None,
        }
        if tokio::time::Instant::now() + backoff >= deadline {
            bail!("{id} not accepted in 30 s");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// `connect bench …`: runs connect-loadgen (beside this binary, or on PATH) with the arguments.
fn bench(args: Vec<String>) -> anyhow::Result<()> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("connect-loadgen")))
        .filter(|p| p.exists());
    let program = beside.unwrap_or_else(|| "connect-loadgen".into());
    let status = std::process::Command::new(&program)
        .args(&args)
        .status()
        .with_context(|| {
            format!(
                "running {} (build it: `cargo build --release -p connect-bench`)",
                program.display()
            )
        })?;
    if !status.success() {
        bail!("connect-loadgen exited with {status}");
    }
    Ok(())
}

/// What a chat session keeps across reconnects.
struct Session {
    me: String,
    target: Option<Target>,
    /// Sends not answered yet, by id.
    pending: HashMap<String, Pending>,
    /// Per conversation, the last seq printed without a gap (what is marked read).
    last: HashMap<String, u64>,
    /// Conversations whose `read` has not gone out yet.
    unacked: HashSet<String>,
    names: HashMap<String, String>,
    token: String,
    quitting: bool,
    /// (conversation, user) → when `* user is typing…` was printed: once per burst (again only
    /// after a stop, their message, or 6 s of quiet).
    typing: HashMap<(String, String), tokio::time::Instant>,
}

impl Session {
    fn prompt(&self) -> String {
        match &self.target {
            Some(Target::User(u)) => format!("talking to {u}"),
            Some(Target::Group(g)) => format!("talking in #{}", self.names.get(g).unwrap_or(g)),
            None => "no conversation yet: /to <user> or /group <group>".into(),
        }
    }

    /// A group given by id or by name → its id.
    fn resolve(&self, target: Target) -> Target {
        match target {
            Target::Group(g) if !self.names.contains_key(&g) => {
                let by_name = self
                    .names
                    .iter()
                    .find(|(_, name)| name.eq_ignore_ascii_case(&g))
                    .map(|(id, _)| id.clone());
                Target::Group(by_name.unwrap_or(g))
            }
            t => t,
        }
    }
}

async fn chat_loop(
    c: &Common,
    user: &str,
    device: Option<String>,
    to: Option<String>,
) -> anyhow::Result<()> {
    if let Some(d) = &device {
        checked_user(d).context("--device")?;
    }
    let token = token_for(c, user)?;
    let mut s = Session {
        me: user.to_owned(),
        target: to.as_deref().and_then(|t| Target::parse(t, user)),
        pending: HashMap::new(),
        last: HashMap::new(),
        unacked: HashSet::new(),
        names: group_names(c, &token).await,
        token,
        quitting: false,
        typing: HashMap::new(),
    };
    if let Some(t) = s.target.take() {
        s.target = Some(s.resolve(t));
    }
    // Lines from the terminal, read for the whole session (across reconnects).
    let (lines_tx, mut lines) = mpsc::channel::<Option<String>>(64);
    tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if lines_tx.send(Some(line)).await.is_err() {
                return;
            }
        }
        let _ = lines_tx.send(None).await;
    });
    let mut backoff = Duration::from_millis(500);
    let mut stdin_open = true;
    loop {
        let (ws, hello) = match connect_ws(c, user, device.as_deref()).await {
            Ok(v) => v,
            Err(e) if s.last.is_empty() && s.pending.is_empty() => return Err(e),
            Err(e) => {
                eprintln!("! {e:#}; again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(500);
        eprintln!(
            "connected as {user}{} to {} — {}; /help lists the commands",
            device
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default(),
            hello["gateway"].as_str().unwrap_or("?"),
            s.prompt()
        );
        match session(c, &mut s, ws, &mut lines, &mut stdin_open).await {
            Ok(()) => return Ok(()),
            Err(e) => eprintln!("! connection lost: {e:#}; reconnecting"),
        }
    }
}

/// One connection of a chat: until the user quits (`Ok`) or the connection is lost (`Err`).
async fn session(
    c: &Common,
    s: &mut Session,
    ws: Ws,
    lines: &mut mpsc::Receiver<Option<String>>,
    stdin_open: &mut bool,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = ws.split();
    // Unanswered sends go again, with their ids.
    for p in s.pending.values() {
        sink.send(Message::Text(p.frame.clone().into())).await?;
    }
    let (retry_tx, mut retry) = mpsc::channel::<String>(64);
    let mut acks = tokio::time::interval(Duration::from_millis(200));
    let mut quit_by: Option<tokio::time::Instant> = None;
    loop {
        if s.quitting && s.pending.is_empty() && s.unacked.is_empty() {
            let _ = sink.send(Message::Close(None)).await;
            return Ok(());
        }
        if s.quitting && quit_by.is_none() {
            quit_by = Some(tokio::time::Instant::now() + Duration::from_secs(10));
        }
        let give_up = async {
            match quit_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.recv(), if *stdin_open && !s.quitting => match line.flatten() {
                Some(line) => handle_input(c, s, &line, &mut sink).await?,
                None => { *stdin_open = false; s.quitting = true; }
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let f: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                    handle_frame(c, s, f, &retry_tx).await;
                }
                Some(Ok(Message::Close(f))) => bail!("closed by the gateway: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed"),
            },
            Some(id) = retry.recv() => {
                if let Some(p) = s.pending.get(&id) {
                    sink.send(Message::Text(p.frame.clone().into())).await?;
                }
            }
            _ = acks.tick() => {
                // What was printed was read (a `read` also acks it for this device).
                for conversation in std::mem::take(&mut s.unacked) {
                    let seq = s.last[&conversation];
                    let read = json!({"type":"read","conversation":conversation,"seq":seq});
                    sink.send(Message::Text(read.to_string().into())).await?;
                }
            }
            () = give_up => {
                eprintln!("! quitting with {} send(s) unanswered", s.pending.len());
                return Ok(());
            }
        }
    }
}

type Sink = futures_util::stream::SplitSink<Ws, Message>;

async fn handle_input(
    c: &Common,
    s: &mut Session,
    line: &str,
    sink: &mut Sink,
) -> anyhow::Result<()> {
    let (target, body) = match Input::parse(line, &s.me) {
        Input::Empty => return Ok(()),
        Input::Help => {
            eprintln!("{}", chat::HELP);
            return Ok(());
        }
        Input::Quit => {
            s.quitting = true;
            return Ok(());
        }
        Input::Invalid(why) => {
            eprintln!("? {why}");
            return Ok(());
        }
        Input::Raw(frame) => {
            sink.send(Message::Text(frame.into())).await?;
            return Ok(());
        }
        Input::Groups => {
            s.names = group_names(c, &s.token).await;
            let mut groups: Vec<_> = s.names.iter().collect();
            groups.sort();
            for (id, name) in groups {
                eprintln!("  #{name}  ({id})");
            }
            if s.names.is_empty() {
                eprintln!("  no groups");
            }
            return Ok(());
        }
        Input::Who => {
            let Some(t) = &s.target else {
                eprintln!("? no conversation yet: /to <user> or /group <group>");
                return Ok(());
            };
            let users: Vec<String> = match t {
                Target::User(u) => vec![u.clone()],
                Target::Group(g) => {
                    let url = format!("{}/v1/groups/{g}", c.api);
                    match client::api_ok(&s.token, "GET", &url, None).await {
                        Ok(group) => group["members"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|m| m.as_str())
                            .filter(|m| *m != s.me)
                            .map(str::to_owned)
                            .collect(),
                        Err(e) => {
                            eprintln!("! {e:#}");
                            return Ok(());
                        }
                    }
                }
            };
            // The answers (and later changes) come as `presence` frames.
            let frame = json!({"type": "watch", "users": users}).to_string();
            sink.send(Message::Text(frame.into())).await?;
            return Ok(());
        }
        Input::Switch(t) => {
            if matches!(t, Target::Group(_)) {
                s.names = group_names(c, &s.token).await;
            }
            s.target = Some(s.resolve(t));
            eprintln!("{}", s.prompt());
            return Ok(());
        }
        Input::History(n) => {
            let Some(t) = &s.target else {
                eprintln!("? no conversation yet: /to <user> or /group <group>");
                return Ok(());
            };
            let conversation = match t.conversation(&s.me) {
                Ok(conversation) => conversation.to_string(),
                Err(e) => {
                    eprintln!("? {e}");
                    return Ok(());
                }
            };
            let url = messages_url(&c.api, &conversation, &format!("limit={n}"));
            match client::api_ok(&s.token, "GET", &url, None).await {
                Ok(page) => {
                    for m in page["messages"].as_array().into_iter().flatten() {
                        println!("{}", chat::line(m, &s.names));
                    }
                }
                Err(e) => eprintln!("! {e:#}"),
            }
            return Ok(());
        }
        Input::Say(body) => match &s.target {
            Some(t) => (t.clone(), body),
            None => {
                eprintln!("? who to? /to <user> or /group <group> first (or @user text)");
                return Ok(());
            }
        },
        Input::SayTo(t, body) => (s.resolve(t), body),
    };
    let id = new_id("cli");
    let frame = send_frame(&id, &target, &body).to_string();
    sink.send(Message::Text(frame.clone().into())).await?;
    s.pending.insert(
        id,
        Pending {
            frame,
            target,
            body,
            tries: 0,
        },
    );
    Ok(())
}

/// Prints a stored message once; a gap before it is filled from history first.
async fn show(c: &Common, s: &mut Session, m: &Value) {
    let Some(conversation) = m["conversation"].as_str().map(str::to_owned) else {
        return;
    };
    let seq = m["seq"].as_u64().unwrap_or(0);
    if let Some(&last) = s.last.get(&conversation) {
        if seq <= last {
            return; // at least once: a repeat
        }
        if seq > last + 1 {
            let url = messages_url(&c.api, &conversation, &format!("after={last}&limit=100"));
            if let Ok(page) = client::api_ok(&s.token, "GET", &url, None).await {
                for earlier in page["messages"].as_array().into_iter().flatten() {
                    let e = earlier["seq"].as_u64().unwrap_or(0);
                    if e < seq && e > s.last[&conversation] {
                        println!("{}", chat::line(earlier, &s.names));
                        s.last.insert(conversation.clone(), e);
                    }
                }
            }
        }
    }
    // A group this terminal has no name for yet (just made, or just joined).
    if m["group"]
        .as_str()
        .is_some_and(|g| !s.names.contains_key(g))
    {
        s.names = group_names(c, &s.token).await;
    }
    println!("{}", chat::line(m, &s.names));
    s.last.insert(conversation.clone(), seq);
    s.unacked.insert(conversation);
}

async fn handle_frame(c: &Common, s: &mut Session, f: Value, retry: &mpsc::Sender<String>) {
    if c.json {
        println!("{f}");
    }
    match f["type"].as_str().unwrap_or("") {
        "message" if c.json => {
            if let (Some(conv), Some(seq)) = (f["conversation"].as_str(), f["seq"].as_u64()) {
                s.last.insert(conv.to_owned(), seq);
                s.unacked.insert(conv.to_owned());
            }
        }
        "message" => {
            if let (Some(conv), Some(from)) = (f["conversation"].as_str(), f["from"].as_str()) {
                s.typing.remove(&(conv.to_owned(), from.to_owned()));
            }
            show(c, s, &f).await
        }
        "presence" if !c.json => println!("{}", chat::presence_line(&f)),
        "typing" if !c.json => {
            let (Some(conv), Some(who)) = (f["conversation"].as_str(), f["user"].as_str()) else {
                return;
            };
            let key = (conv.to_owned(), who.to_owned());
            if f["stop"] == true {
                s.typing.remove(&key);
                return;
            }
            let now = tokio::time::Instant::now();
            let shown = s
                .typing
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(6));
            s.typing.insert(key, now);
            if !shown {
                match f["conversation"]
                    .as_str()
                    .and_then(|c| c.strip_prefix("group:"))
                {
                    Some(g) => println!(
                        "* {who} is typing in #{}…",
                        s.names.get(g).map_or(g, String::as_str)
                    ),
                    None => println!("* {who} is typing…"),
                }
            }
        }
        "accepted" => {
            let id = f["id"].as_str().unwrap_or("");
            if let Some(Pending { target, body, .. }) = s.pending.remove(id) {
                let mut m = json!({"conversation": f["conversation"], "seq": f["seq"], "from": s.me,
                    "id": id, "body": body, "ts": f["ts"]});
                if let Target::Group(g) = target {
                    m["group"] = g.into();
                }
                if !c.json {
                    show(c, s, &m).await;
                }
            }
        }
        "error" => {
            let code = f["code"].as_str().unwrap_or("error");
            let id = f["id"].as_str().unwrap_or("");
            match s.pending.get_mut(id) {
                Some(p) if retried(code) => {
                    p.tries += 1;
                    let retry = retry.clone();
                    let id = id.to_owned();
                    let wait = Duration::from_millis(250 << p.tries.min(5));
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = retry.send(id).await;
                    });
                }
                Some(_) => {
                    s.pending.remove(id);
                    if !c.json {
                        eprintln!(
                            "! not sent: {code}: {}",
                            f["message"].as_str().unwrap_or("")
                        );
                    }
                }
                None if !c.json => eprintln!("! {code}: {}", f["message"].as_str().unwrap_or("")),
                None => {}
            }
        }
        _ => {}
    }
}
