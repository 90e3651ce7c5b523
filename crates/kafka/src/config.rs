//! Client settings shared by every Kafka user in the system.

use rdkafka::config::ClientConfig;

/// How to reach and use the broker. Built by each binary from its env.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BROKERS`.
    pub brokers: String,
    /// `KAFKA_FETCH_WAIT_MS`: how long the broker may hold a fetch while no data is there. With
    /// `fetch_min_bytes` 1 the broker answers a waiting fetch as soon as a record arrives, so
    /// this bounds idle polling (a few empty fetches a second per consumer), not latency.
    pub fetch_wait_ms: u32,
    /// `KAFKA_FETCH_MIN_BYTES`: the broker holds a fetch (up to the fetch wait) until this much
    /// data is there. 1: a record is fetched when it lands. Anything larger makes every record
    /// of a quiet system wait the whole fetch wait, on every hop.
    pub fetch_min_bytes: u32,
    /// `KAFKA_LINGER_MS`: how long the producer holds a record hoping for more. 0: records go
    /// when the broker connection is free; under load they still travel together, because
    /// records queue while earlier produce requests are in flight. Our producers hand records
    /// over in batches already formed (a messaging batch's deliveries), so a linger would only
    /// add its time to every message.
    pub linger_ms: u32,
    /// `KAFKA_COMMIT_INTERVAL_MS`: how often a consumer-group member commits the offsets of
    /// the batches it has finished (a revoke and a stop commit at once). An offset commit is a
    /// replicated write on the broker: once per batch, a quiet system's one-message batches
    /// paid one per message. A crash replays at most this much more (the step is idempotent).
    pub commit_interval_ms: u32,
    /// `KAFKA_MESSAGE_TIMEOUT_MS`: how long a produce may take before it is failed.
    pub message_timeout_ms: u32,
    /// `KAFKA_SESSION_TIMEOUT_MS`: how long a consumer-group member may go silent before its
    /// partitions move to another member (after a crash: the hand-over delay).
    pub session_timeout_ms: u32,
    /// `KAFKA_MAX_POLL_INTERVAL_MS`: a member that does not poll for this long leaves the group;
    /// also bounds how long a rebalance waits for a member that died.
    pub max_poll_interval_ms: u32,
    /// `KAFKA_BROKER_CHECK_MS`: how often a long-lived client's statistics are read to notice
    /// that it knows no broker any more ([`crate::watch`]); also bounds how long it stays so.
    pub broker_check_ms: u32,
    /// `KAFKA_DEBUG`: librdkafka debug contexts (e.g. `cgrp,fetch`), empty for none.
    pub debug: Option<String>,
    /// How clients authenticate and encrypt (MSK: TLS, SASL/SCRAM).
    pub security: Security,
}

/// `KAFKA_SECURITY_PROTOCOL` and what it needs.
#[derive(Clone, PartialEq, Eq)]
pub enum Security {
    /// `plaintext` (the local stack).
    Plaintext,
    /// `ssl`: TLS; `KAFKA_SSL_CA_LOCATION` names a CA bundle (PEM) to trust instead of the
    /// system's.
    Ssl { ca: Option<String> },
    /// `sasl_ssl`: TLS and SASL/SCRAM (`KAFKA_SASL_MECHANISM`: `SCRAM-SHA-512`, what MSK
    /// uses, or `SCRAM-SHA-256`; `KAFKA_SASL_USERNAME` / `KAFKA_SASL_PASSWORD`, from Secrets
    /// Manager in AWS).
    SaslSsl {
        ca: Option<String>,
        mechanism: String,
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Security {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plaintext => write!(f, "plaintext"),
            Self::Ssl { ca } => write!(f, "ssl (ca: {ca:?})"),
            Self::SaslSsl {
                ca,
                mechanism,
                username,
                ..
            } => write!(f, "sasl_ssl ({mechanism} as {username}, ca: {ca:?})"),
        }
    }
}

impl Security {
    /// From `KAFKA_SECURITY_PROTOCOL` (`plaintext`) and the variables its protocol needs.
    pub fn from_settings(
        s: &connect_config::Settings,
    ) -> Result<Self, connect_config::ConfigError> {
        use connect_config::ConfigError;
        let ca = s.optional("KAFKA_SSL_CA_LOCATION");
        match s
            .string("KAFKA_SECURITY_PROTOCOL", "plaintext")
            .to_ascii_lowercase()
            .as_str()
        {
            "plaintext" => Ok(Self::Plaintext),
            "ssl" => Ok(Self::Ssl { ca }),
            "sasl_ssl" => {
                let mechanism = s
                    .string("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
                    .to_ascii_uppercase();
                if !matches!(mechanism.as_str(), "SCRAM-SHA-512" | "SCRAM-SHA-256") {
                    return Err(ConfigError::new(
                        "KAFKA_SASL_MECHANISM",
                        format!("{mechanism:?}: SCRAM-SHA-512 or SCRAM-SHA-256"),
                    ));
                }
                let need = |name: &str| {
                    s.optional(name)
                        .ok_or_else(|| ConfigError::new(name, "required with sasl_ssl"))
                };
                Ok(Self::SaslSsl {
                    ca,
                    mechanism,
                    username: need("KAFKA_SASL_USERNAME")?,
                    password: need("KAFKA_SASL_PASSWORD")?,
                })
            }
            other => Err(ConfigError::new(
                "KAFKA_SECURITY_PROTOCOL",
                format!("{other:?}: plaintext, ssl or sasl_ssl"),
            )),
        }
    }

    /// Sets librdkafka's security properties.
    pub fn apply(&self, c: &mut ClientConfig) {
        let ca = match self {
            Self::Plaintext => {
                c.set("security.protocol", "plaintext");
                return;
            }
            Self::Ssl { ca } => {
                c.set("security.protocol", "ssl");
                ca
            }
            Self::SaslSsl {
                ca,
                mechanism,
                username,
                password,
            } => {
                c.set("security.protocol", "sasl_ssl")
                    .set("sasl.mechanisms", mechanism)
                    .set("sasl.username", username)
                    .set("sasl.password", password);
                ca
            }
        };
        // The broker's name is checked against its certificate.
        c.set("ssl.endpoint.identification.algorithm", "https");
        if let Some(ca) = ca {
            c.set("ssl.ca.location", ca);
        }
    }
}

impl KafkaConfig {
    /// The brokers and how to reach them securely: the base of every client.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        self.security.apply(&mut c);
        c
    }

    /// A producer: acks=all, idempotent (ordered, no repeats on retry).
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.client();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("socket.nagle.disable", "true");
        c
    }

    /// A consumer; offsets are committed by hand, only after the work is done.
    pub fn consumer(&self, group_id: &str) -> ClientConfig {
        let mut c = self.client();
        c.set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string())
            .set("fetch.min.bytes", self.fetch_min_bytes.max(1).to_string())
            .set("fetch.error.backoff.ms", "50")
            .set("socket.nagle.disable", "true")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 5).max(100).to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval_ms
                    .max(self.session_timeout_ms)
                    .to_string(),
            );
        if let Some(d) = &self.debug {
            c.set("debug", d);
        }
        c
    }
}

impl KafkaConfig {
    /// From `KAFKA_BROKERS` (127.0.0.1:9092), `KAFKA_FETCH_WAIT_MS` (500),
    /// `KAFKA_FETCH_MIN_BYTES` (1), `KAFKA_LINGER_MS` (0), `KAFKA_COMMIT_INTERVAL_MS` (100),
    /// `KAFKA_MESSAGE_TIMEOUT_MS` (5000), `KAFKA_SESSION_TIMEOUT_MS` (10000),
    /// `KAFKA_MAX_POLL_INTERVAL_MS` (30000), `KAFKA_BROKER_CHECK_MS` (5000), `KAFKA_DEBUG`
    /// (none), and the security variables
    /// ([`Security::from_settings`]).
    pub fn from_settings(
        s: &connect_config::Settings,
    ) -> Result<Self, connect_config::ConfigError> {
        Ok(Self {
            brokers: s.string("KAFKA_BROKERS", "127.0.0.1:9092"),
            fetch_wait_ms: s.parsed("KAFKA_FETCH_WAIT_MS", 500)?,
            linger_ms: s.parsed("KAFKA_LINGER_MS", 0)?,
            fetch_min_bytes: s.parsed("KAFKA_FETCH_MIN_BYTES", 1)?,
            message_timeout_ms: s.parsed("KAFKA_MESSAGE_TIMEOUT_MS", 5000)?,
            commit_interval_ms: s.parsed("KAFKA_COMMIT_INTERVAL_MS", 100)?,
            session_timeout_ms: s.parsed("KAFKA_SESSION_TIMEOUT_MS", 10_000)?,
            max_poll_interval_ms: s.parsed("KAFKA_MAX_POLL_INTERVAL_MS", 30_000)?,
            broker_check_ms: s.parsed("KAFKA_BROKER_CHECK_MS", 5000)?,
            debug: s.optional("KAFKA_DEBUG"),
            security: Security::from_settings(s)?,
        })
    }
}

/// Topic names: `KAFKA_INCOMING_TOPIC` (incoming_messages), `KAFKA_OUTGOING_TOPIC`
/// (outgoing_messages), `KAFKA_USER_CONNECTED_TOPIC` (user_connected), `KAFKA_PRESENCE_TOPIC`
/// (presence); with other regions
/// `KAFKA_SEQUENCED_TOPIC` (sequenced_messages) and `KAFKA_ACKS_TOPIC` (acks), which
/// MirrorMaker 2 replicates to the other regions (forward topics are named after the home
/// region: `forward_<region>`).
#[derive(Debug, Clone)]
pub struct Topics {
    pub incoming: String,
    pub outgoing: String,
    pub user_connected: String,
    pub sequenced: String,
    pub acks: String,
    /// Push requests, messaging → the push function (key = user).
    pub push: String,
    /// Pushes held back by their collapse window, the push function → `push-later` (key = user).
    pub push_later: String,
    /// Presence transitions, gateways and messaging's sweep → every region's presence relay
    /// (key = user; MirrorMaker 2 replicates it as `<region>.presence`).
    pub presence: String,
}

impl Topics {
    pub fn from_settings(s: &connect_config::Settings) -> Self {
        Self {
            incoming: s.string("KAFKA_INCOMING_TOPIC", "incoming_messages"),
            outgoing: s.string("KAFKA_OUTGOING_TOPIC", "outgoing_messages"),
            user_connected: s.string("KAFKA_USER_CONNECTED_TOPIC", "user_connected"),
            sequenced: s.string("KAFKA_SEQUENCED_TOPIC", "sequenced_messages"),
            acks: s.string("KAFKA_ACKS_TOPIC", "acks"),
            push: s.string("KAFKA_PUSH_TOPIC", "push_requests"),
            push_later: s.string("KAFKA_PUSH_LATER_TOPIC", "push_later"),
            presence: s.string("KAFKA_PRESENCE_TOPIC", "presence"),
        }
    }
}

#[cfg(test)]
impl KafkaConfig {
    /// A plaintext client of `brokers` with the defaults, for tests.
    pub(crate) fn local(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            fetch_wait_ms: 500,
            fetch_min_bytes: 1,
            linger_ms: 0,
            commit_interval_ms: 100,
            message_timeout_ms: 5000,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 30_000,
            broker_check_ms: 5000,
            debug: None,
            security: Security::Plaintext,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(security: Security) -> std::collections::HashMap<String, String> {
        let mut c = ClientConfig::new();
        security.apply(&mut c);
        [
            "security.protocol",
            "sasl.mechanisms",
            "sasl.username",
            "sasl.password",
            "ssl.ca.location",
            "ssl.endpoint.identification.algorithm",
        ]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), c.get(k)?.to_owned())))
        .collect()
    }

    #[test]
    fn security_settings_map_to_librdkafka() {
        let plain = props(Security::Plaintext);
        assert_eq!(plain["security.protocol"], "plaintext");
        assert!(!plain.contains_key("sasl.username"));
        let scram = props(Security::SaslSsl {
            ca: Some("/etc/ca.pem".into()),
            mechanism: "SCRAM-SHA-512".into(),
            username: "connect".into(),
            password: "s3cret".into(),
        });
        assert_eq!(scram["security.protocol"], "sasl_ssl");
        assert_eq!(scram["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(scram["sasl.username"], "connect");
        assert_eq!(scram["sasl.password"], "s3cret");
        assert_eq!(scram["ssl.ca.location"], "/etc/ca.pem");
        assert_eq!(scram["ssl.endpoint.identification.algorithm"], "https");
        let tls = props(Security::Ssl { ca: None });
        assert_eq!(tls["security.protocol"], "ssl");
        assert!(!tls.contains_key("ssl.ca.location"));
    }

    /// librdkafka is built with TLS and SCRAM: a client with those settings can be created
    /// (creating one does not connect).
    #[test]
    fn the_bundled_librdkafka_speaks_tls_and_scram() {
        for security in [
            Security::Ssl { ca: None },
            Security::SaslSsl {
                ca: None,
                mechanism: "SCRAM-SHA-512".into(),
                username: "connect".into(),
                password: "s3cret".into(),
            },
        ] {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", "127.0.0.1:1");
            security.apply(&mut c);
            let made: Result<rdkafka::producer::BaseProducer, _> = c.create();
            assert!(made.is_ok(), "{security:?}: {:?}", made.err());
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let s = Security::SaslSsl {
            ca: None,
            mechanism: "SCRAM-SHA-512".into(),
            username: "connect".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}
