//! One send followed through the stack by its trace id: the gateway logs the `traceparent` it
//! gives the record (`send published`, target `connect::trace`), messaging logs the same trace
//! id when it takes the record in, so `grep <trace id>` over the stack's logs shows the send's
//! path. The stack logs `connect::trace` at debug level (`scripts/stack.sh`: `RUST_LOG`); its
//! logs are in `CONNECT_STACK_LOGS` (`.local/logs` when unset).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;

use crate::helpers::*;

fn logs_dir() -> PathBuf {
    std::env::var("CONNECT_STACK_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/logs"))
}

/// The logs of the services whose names start with `service`, with their lengths now.
fn logs_of(service: &str) -> anyhow::Result<BTreeMap<PathBuf, u64>> {
    let mut logs = BTreeMap::new();
    for entry in std::fs::read_dir(logs_dir())? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with(service) && name.ends_with(".log") {
            let len = std::fs::metadata(&path)?.len();
            logs.insert(path, len);
        }
    }
    ensure!(
        !logs.is_empty(),
        "no {service} log in {}",
        logs_dir().display()
    );
    Ok(logs)
}

/// What `logs` got since their lengths were taken, one line at a time, colours taken out.
fn lines_since(logs: &BTreeMap<PathBuf, u64>) -> anyhow::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut lines = Vec::new();
    for (path, from) in logs {
        let mut file = std::fs::File::open(path)?;
        file.seek(SeekFrom::Start(*from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            lines.push(strip_ansi(line));
        }
    }
    Ok(lines)
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ … final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `field=` in a log line.
fn field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    line[at..].split_whitespace().next()
}

#[tokio::test]
async fn a_send_is_found_by_its_trace_id_in_the_gateways_and_messagings_logs() -> anyhow::Result<()>
{
    let gateways_logs = logs_of("gateway-")?;
    let messaging_logs = logs_of("messaging-")?;
    let gw = gateways();
    let (alice, bob) = (user("alice"), user("bob"));
    let mut a = Client::connect(&gw[0], &alice).await?;
    let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    a.send_accepted(&id, &bob, "traced").await?;

    // The gateway: the trace id(s) it gave this send (a retried send gets one per record).
    let deadline = tokio::time::Instant::now() + WAIT;
    let traces: Vec<String> = loop {
        let found: Vec<String> = lines_since(&gateways_logs)?
            .iter()
            .filter(|l| l.contains("send published") && field(l, "message.id") == Some(id.as_str()))
            .filter_map(|l| field(l, "trace_id").map(str::to_owned))
            .collect();
        if !found.is_empty() {
            break found;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no `send published` line for {id} in {:?}",
            gateways_logs.keys()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for trace in &traces {
        ensure!(
            trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
            "a W3C trace id: {trace}"
        );
    }
    // Messaging: the same trace id, on the line of the record it took in.
    loop {
        let lines = lines_since(&messaging_logs)?;
        let taken = lines.iter().find(|l| {
            l.contains("send taken in")
                && field(l, "trace_id").is_some_and(|t| traces.iter().any(|x| x == t))
        });
        if let Some(line) = taken {
            ensure!(
                field(line, "message.id") == Some(id.as_str()),
                "the traced record is this send: {line}"
            );
            ensure!(line.contains(&dm(&alice, &bob)), "{line}");
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "messaging logged none of {traces:?} for {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
