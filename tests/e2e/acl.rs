//! Kafka ACLs (the AWS-like stack, as on MSK): each service's SCRAM user may use only its own
//! topics and groups (`connect_kafka::acl::policy`, made by `connect-setup`), and a user's
//! password is its own. The plain stack has no users: there is nothing to refuse there.

use crate::helpers::settings;
use std::time::Duration;

use anyhow::{bail, Context};
use connect_kafka::config::Security;
use connect_kafka::rdkafka::client::ClientContext;
use connect_kafka::rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use connect_kafka::rdkafka::error::KafkaError;
use connect_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use connect_kafka::rdkafka::types::RDKafkaErrorCode;
use connect_kafka::rdkafka::{Offset, TopicPartitionList};
use connect_kafka::{KafkaConfig, Topics};

/// The stack's Kafka client settings as `user` with `password`; None on a stack without SCRAM.
fn as_user(user: &str, password: &str) -> anyhow::Result<Option<KafkaConfig>> {
    let mut kafka = KafkaConfig::from_settings(&settings())?;
    kafka.message_timeout_ms = 5000;
    match &mut kafka.security {
        Security::SaslSsl {
            username,
            password: p,
            ..
        } => {
            *username = user.to_owned();
            *p = password.to_owned();
            Ok(Some(kafka))
        }
        _ => Ok(None),
    }
}

/// The gateway's user on this stack (the AWS-like stack exports it); None on the plain stack.
fn gateway() -> anyhow::Result<Option<KafkaConfig>> {
    if !matches!(
        KafkaConfig::from_settings(&settings())?.security,
        Security::SaslSsl { .. }
    ) {
        eprintln!("a plaintext Kafka has no users and no ACLs: nothing to refuse (the AWS-like stack runs this)");
        return Ok(None);
    }
    let user = std::env::var("KAFKA_GATEWAY_SASL_USERNAME").context(
        "KAFKA_GATEWAY_SASL_USERNAME: the AWS-like stack says which user the gateway is",
    )?;
    let password =
        std::env::var("KAFKA_GATEWAY_SASL_PASSWORD").context("KAFKA_GATEWAY_SASL_PASSWORD")?;
    as_user(&user, &password)
}

async fn produce(kafka: &KafkaConfig, topic: &str) -> Result<(), KafkaError> {
    let producer: FutureProducer = kafka.producer().create()?;
    let record = FutureRecord::to(topic).key("acl-test").payload("{}");
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// `result` is a refusal for want of an ACL on a topic (or, with `group`, on a group).
fn refused(result: Result<(), KafkaError>, what: &str, group: bool) -> anyhow::Result<()> {
    let code = result
        .as_ref()
        .err()
        .and_then(KafkaError::rdkafka_error_code);
    match (result, code) {
        (Err(_), Some(RDKafkaErrorCode::TopicAuthorizationFailed)) => Ok(()),
        (Err(_), Some(RDKafkaErrorCode::GroupAuthorizationFailed)) if group => Ok(()),
        (Err(e), _) => bail!("{what}: refused, but not by an ACL: {e}"),
        (Ok(()), _) => bail!("{what}: allowed"),
    }
}

#[tokio::test]
async fn the_gateways_kafka_user_may_submit_but_not_read_submissions_or_forge_deliveries(
) -> anyhow::Result<()> {
    let Some(gateway) = gateway()? else {
        return Ok(());
    };
    let topics = Topics::from_settings(&settings());
    // Its own: a record on user_connected (offline delivery refuses it for naming no session).
    produce(&gateway, &topics.user_connected)
        .await
        .context("the gateway writes user_connected")?;
    let outgoing = produce(&gateway, &topics.outgoing).await;
    refused(outgoing, "the gateway writing outgoing_messages", false)?;
    let push = produce(&gateway, &topics.push).await;
    refused(push, "the gateway writing push_requests", false)?;

    // Reading incoming_messages is refused: in messaging's group (the group is not the
    // gateway's), and under a gateway's own group name (the topic is not its to read).
    for (group, group_refused) in [("messaging", true), ("gw-acl-test", false)] {
        let consumer: BaseConsumer = gateway.consumer(group).create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topics.incoming, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let outcome = loop {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Err(e)) => break Err(e),
                Some(Ok(_)) => break Ok(()),
                None if std::time::Instant::now() > deadline => {
                    bail!("no answer to a fetch of incoming_messages in 20 s")
                }
                None => {}
            }
        };
        let what = format!("the gateway reading incoming_messages as group {group}");
        refused(outcome, &what, group_refused)?;
    }
    Ok(())
}

/// The errors a client met (librdkafka reports a failed sign-in here, not on the request).
#[derive(Default)]
struct Errors(std::sync::Mutex<Vec<KafkaError>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, _reason: &str) {
        self.0.lock().expect("errors").push(error);
    }
}

impl ConsumerContext for Errors {}

/// Signs in as `kafka`'s user and asks for the cluster's metadata; the errors met on the way.
fn sign_in(kafka: &KafkaConfig) -> anyhow::Result<(Result<(), KafkaError>, Vec<KafkaError>)> {
    let consumer: BaseConsumer<Errors> = kafka
        .consumer("gw-acl-test")
        .create_with_context(Errors::default())?;
    let fetched = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map(|_| ());
    // Errors reach the context as the client is polled.
    for _ in 0..10 {
        let _ = consumer.poll(Duration::from_millis(100));
    }
    let errors = std::mem::take(&mut *consumer.context().0.lock().expect("errors"));
    Ok((fetched, errors))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_kafka_user_takes_only_its_own_password() -> anyhow::Result<()> {
    let Some(gateway) = gateway()? else {
        return Ok(());
    };
    let Security::SaslSsl { password, .. } = &gateway.security else {
        unreachable!("gateway() is SASL/SCRAM")
    };
    // The gateway signs in with its own password...
    let (fetched, _) = tokio::task::block_in_place(|| sign_in(&gateway))?;
    fetched.context("the gateway signs in with its password")?;
    // ...and messaging's user with the gateway's password is turned away for its credentials.
    let pretender = as_user("messaging", password)?.context("SASL/SCRAM")?;
    let (fetched, errors) = tokio::task::block_in_place(|| sign_in(&pretender))?;
    anyhow::ensure!(
        fetched.is_err(),
        "messaging's user signed in with the gateway's password"
    );
    anyhow::ensure!(
        errors
            .iter()
            .any(|e| e.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication)),
        "refused, but not for its credentials: {errors:?}"
    );
    Ok(())
}
