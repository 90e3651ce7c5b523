//! `connect-setup`: creates the Kafka topics and DynamoDB tables (idempotent). Run by
//! `make up` / `make run` before the services start, by tests for private topics, and on AWS
//! by each messaging task's setup container with `SETUP_TABLES=false` (the template makes the
//! tables there). With `CONNECT_PEER_REGIONS` it also creates the topics the regions exchange
//! through MirrorMaker 2: `sequenced_messages`, `acks` and `forward_<peer>` here, and the names
//! MirrorMaker 2 gives the peers' copies (`<peer>.sequenced_messages`, `<peer>.acks`,
//! `<peer>.forward_<here>`, `<peer>.presence`), so messaging subscribes to topics that exist.
//!
//! With `KAFKA_ACLS=true` (MSK, the AWS-like stack) it then creates each service's Kafka ACLs
//! (`connect_kafka::acl::policy`), as the administrator (its own SCRAM user).
//!
//! `connect-setup move-homes <from> <to>`: failover. Every conversation homed in region `from`
//! is homed in `to` from now on, its epoch bumped and its sequence continued past anything
//! `from` may have allocated. Run it once `from`'s messaging is stopped or cut off.
//!
//! `connect-setup vapid-key`: prints a fresh VAPID key pair (Web Push), for the deploy's
//! `VapidPrivateKey` parameter.
//!
//! `connect-setup replay <topic> <from>`: rewinds the messaging consumer group
//! (`MESSAGING_GROUP_ID`, `messaging`) on a topic, so messaging reads it again from `earliest`,
//! a time (milliseconds since the epoch) or a while ago (`90s`, `30m`, `2h`, `1d`) when it next
//! starts. Refused while messaging runs. Dedupe answers what was accepted before with its
//! original seq, so a replay stores nothing twice (within `DEDUPE_TTL_SECS`). Runbook:
//! docs/runbook.md.

use anyhow::Context;
use connect_dynamo::{DynamoConfig, Tables};
use connect_kafka::{KafkaConfig, Topics};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = connect_config::Settings::from_process();
    connect_service::telemetry::init_tracing(&settings);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => setup(&settings).await,
        ["move-homes", from, to] => move_homes(&settings, from, to).await,
        ["replay", topic, from] => replay(&settings, topic, from),
        ["vapid-key"] => {
            let (private, public) = connect_push::vapid::Vapid::generate();
            println!("private (VapidPrivateKey, keep it secret): {private}\npublic (GET /v1/push/vapid):            {public}");
            Ok(())
        }
        _ => {
            eprintln!("usage: connect-setup                      create topics and tables\n       connect-setup vapid-key                print a fresh VAPID key pair (Web Push)\n       connect-setup move-homes <from> <to>  failover: rehome region <from>'s conversations to <to>\n       connect-setup replay <topic> <from>   rewind messaging's group on <topic> to <from>: earliest, epoch ms, or 30m / 2h / 1d ago");
            std::process::exit(2)
        }
    }
}

/// `earliest`, milliseconds since the epoch, or `<n>s|m|h|d` before `now_ms`.
fn rewind_point(from: &str, now_ms: i64) -> anyhow::Result<connect_kafka::RewindTo> {
    if from == "earliest" {
        return Ok(connect_kafka::RewindTo::Earliest);
    }
    if let Ok(ms) = from.parse::<i64>() {
        anyhow::ensure!(ms >= 0, "a time is milliseconds since the epoch");
        return Ok(connect_kafka::RewindTo::Time(ms));
    }
    let (n, unit) = from.split_at(from.len().saturating_sub(1));
    let n: i64 = n
        .parse()
        .with_context(|| format!("{from:?}: earliest, epoch ms, or 30m / 2h / 1d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("{from:?}: earliest, epoch ms, or 30m / 2h / 1d"),
    };
    Ok(connect_kafka::RewindTo::Time(now_ms - secs * 1000))
}

fn replay(settings: &connect_config::Settings, topic: &str, from: &str) -> anyhow::Result<()> {
    let to = rewind_point(from, connect_core::now_ms() as i64)?;
    let kafka = KafkaConfig::from_settings(settings).map_err(anyhow::Error::msg)?;
    let group = settings.string("MESSAGING_GROUP_ID", "messaging");
    let offsets =
        connect_kafka::rewind_group(&kafka, &group, topic, to).map_err(anyhow::Error::msg)?;
    for (partition, offset) in &offsets {
        println!("{topic}/{partition}: {group} resumes at offset {offset}");
    }
    println!("rewound {group} on {topic} ({to:?}); start messaging to replay");
    Ok(())
}

async fn move_homes(
    settings: &connect_config::Settings,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    connect_core::regions::Regions::parse(to, from).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(from != to, "move-homes: <from> and <to> must differ");
    let dynamo =
        connect_dynamo::client(&DynamoConfig::from_settings(settings).map_err(anyhow::Error::msg)?)
            .await;
    let tables = Tables::from_settings(settings);
    let sequences = connect_dynamo::DynamoSequences::new(dynamo, &tables.sequences, to, 1);
    let moved = sequences
        .move_homes(from, to)
        .await
        .context("moving the homes")?;
    for (conversation, seq, next) in &moved.last {
        println!("{conversation}: home {from} -> {to}, last seq {seq}, continues after {next}");
    }
    println!(
        "moved {} conversations from {from} to {to} ({} moved by someone else meanwhile)",
        moved.moved, moved.skipped
    );
    Ok(())
}

/// Each service's Kafka ACLs (`KAFKA_ACLS=true`): its SCRAM user (`KAFKA_ACL_<SERVICE>_USER`,
/// the service's name by default) and the consumer groups its triggers and messaging use.
fn acls(
    settings: &connect_config::Settings,
    topics: &Topics,
    peers: &[String],
) -> Vec<connect_kafka::acl::Acl> {
    let users = connect_kafka::acl::Users {
        admin: settings.string("KAFKA_ACL_ADMIN_USER", "admin"),
        gateway: settings.string("KAFKA_ACL_GATEWAY_USER", "gateway"),
        messaging: settings.string("KAFKA_ACL_MESSAGING_USER", "messaging"),
        offline: settings.string("KAFKA_ACL_OFFLINE_USER", "offline"),
        push: settings.string("KAFKA_ACL_PUSH_USER", "push"),
        group_events: settings.string("KAFKA_ACL_GROUP_EVENTS_USER", "group-events"),
        mirrormaker: settings.string("KAFKA_ACL_MIRRORMAKER_USER", "mirrormaker"),
    };
    let names = connect_kafka::acl::Names {
        gateway_group_prefix: settings.string("KAFKA_ACL_GATEWAY_GROUP_PREFIX", "gw-"),
        messaging_groups: vec![
            settings.string("MESSAGING_GROUP_ID", "messaging"),
            settings.string("MESSAGING_PRESENCE_GROUP_ID", "presence"),
        ],
        offline_group: settings.string("KAFKA_ACL_OFFLINE_GROUP", "lambda-offline-delivery"),
        push_groups: vec![
            settings.string("KAFKA_ACL_PUSH_GROUP", "lambda-push"),
            settings.string("KAFKA_ACL_PUSH_LATER_GROUP", "lambda-push-later"),
        ],
        peers: peers.to_vec(),
    };
    connect_kafka::acl::policy(&users, topics, &names)
}

async fn setup(settings: &connect_config::Settings) -> anyhow::Result<()> {
    let kafka = KafkaConfig::from_settings(settings).map_err(anyhow::Error::msg)?;
    let topics = Topics::from_settings(settings);
    let incoming: i32 = settings.parsed("INCOMING_PARTITIONS", 8)?;
    let outgoing: i32 = settings.parsed("OUTGOING_PARTITIONS", 16)?;
    let connected: i32 = settings.parsed("USER_CONNECTED_PARTITIONS", 8)?;
    let push: i32 = settings.parsed("PUSH_PARTITIONS", 4)?;
    let presence: i32 = settings.parsed("PRESENCE_PARTITIONS", 8)?;
    let replication: i32 = settings.parsed("KAFKA_REPLICATION_FACTOR", 1)?;
    connect_kafka::ensure_topics(
        &kafka,
        &[
            (&topics.incoming, incoming),
            (&topics.outgoing, outgoing),
            (&topics.user_connected, connected),
            (&topics.push, push),
            (&topics.push_later, push),
            (&topics.presence, presence),
        ],
        replication,
    )
    .await
    .map_err(anyhow::Error::msg)
    .context("creating topics")?;
    println!(
        "topics {} ({incoming} partitions), {} ({outgoing} partitions), {} ({connected}), {} and {} ({push}), {} ({presence})",
        topics.incoming, topics.outgoing, topics.user_connected, topics.push, topics.push_later, topics.presence
    );
    let regions =
        connect_core::regions::Regions::from_settings(settings).map_err(anyhow::Error::msg)?;
    if regions.active() {
        // Every region's copy of a topic has the same partitions (MirrorMaker 2 keeps a
        // record's partition, so a conversation stays one ordered stream).
        let mut names = vec![topics.sequenced.clone(), topics.acks.clone()];
        for peer in &regions.peers {
            names.push(connect_core::regions::forward_topic(peer));
        }
        for (forward, sequenced, acks) in regions.mirrored_topics(&topics.sequenced, &topics.acks) {
            names.extend([forward, sequenced, acks]);
        }
        let mut wanted: Vec<(&str, i32)> = names.iter().map(|n| (n.as_str(), incoming)).collect();
        // The peers' presence, as MirrorMaker 2 names it here (same partitions as ours).
        let mirrored_presence: Vec<String> = regions
            .peers
            .iter()
            .map(|p| connect_core::regions::remote_topic(p, &topics.presence))
            .collect();
        wanted.extend(mirrored_presence.iter().map(|n| (n.as_str(), presence)));
        connect_kafka::ensure_topics(&kafka, &wanted, replication)
            .await
            .map_err(anyhow::Error::msg)
            .context("creating the regions' topics")?;
        println!(
            "region {} with {:?}: topics {}",
            regions.local,
            regions.peers,
            names
                .iter()
                .chain(&mirrored_presence)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if settings.parsed("KAFKA_ACLS", false)? {
        let acls = acls(settings, &topics, &regions.peers);
        connect_kafka::acl::ensure_acls(&kafka, &acls)
            .await
            .context("creating the Kafka ACLs")?;
        let mut principals: Vec<&str> = acls.iter().map(|a| a.principal.as_str()).collect();
        principals.dedup();
        println!("{} Kafka ACLs for {}", acls.len(), principals.join(", "));
    }
    if settings.parsed("SETUP_TABLES", true)? {
        let dynamo = connect_dynamo::client(
            &DynamoConfig::from_settings(settings).map_err(anyhow::Error::msg)?,
        )
        .await;
        let tables = Tables::from_settings(settings);
        connect_dynamo::ensure_tables(
            &dynamo,
            &tables,
            settings.parsed("DYNAMODB_STREAMS", false)?,
        )
        .await
        .map_err(anyhow::Error::msg)
        .context("creating tables")?;
        println!(
            "tables {}, {}, {}, {}, {}, {}",
            tables.chat, tables.sequences, tables.groups, tables.inbox, tables.places, tables.push
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use connect_kafka::RewindTo;

    #[test]
    fn rewind_points() {
        let now = 10_000_000;
        assert_eq!(rewind_point("earliest", now).unwrap(), RewindTo::Earliest);
        assert_eq!(rewind_point("1234", now).unwrap(), RewindTo::Time(1234));
        assert_eq!(
            rewind_point("90s", now).unwrap(),
            RewindTo::Time(now - 90_000)
        );
        assert_eq!(
            rewind_point("2m", now).unwrap(),
            RewindTo::Time(now - 120_000)
        );
        assert_eq!(
            rewind_point("1h", now).unwrap(),
            RewindTo::Time(now - 3_600_000)
        );
        assert_eq!(
            rewind_point("1d", now).unwrap(),
            RewindTo::Time(now - 86_400_000)
        );
        for bad in ["", "soon", "5w", "-3", "h"] {
            assert!(rewind_point(bad, now).is_err(), "{bad}");
        }
    }
}
