//! Kafka ACLs: one SCRAM user per service, each allowed only the topics and consumer groups it
//! needs ([`policy`]), created by `connect-setup` ([`ensure_acls`]).
//!
//! MSK keeps `allow.everyone.if.no.acl.found=true` and has no super users but its brokers, so
//! the administrator's own ACLs come first: `All` on every topic and group (the literal `*`)
//! and on the cluster (but `ClusterAction`, the brokers'). From then on every topic and group
//! has an ACL that matches it, so a principal not named in one is refused everywhere, as with
//! `allow.everyone.if.no.acl.found=false`. The AWS-like local stack runs its broker the same
//! way (`scripts/stack.sh`).

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;

use crate::admin::AdminError;
use crate::{KafkaConfig, Topics};

/// What an ACL is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Topic,
    Group,
    Cluster,
}

/// How an ACL's name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pattern {
    /// That name (`*`: every resource of the kind).
    Literal,
    /// Every name that starts with it.
    Prefixed,
}

/// What an ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

/// One allow rule: `principal` (a SCRAM user name) may do `operation` on `resource` `name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Acl {
    pub principal: String,
    pub resource: Resource,
    pub pattern: Pattern,
    pub name: String,
    pub operation: Operation,
}

/// The SCRAM user of each service (`KAFKA_ACL_*_USER` of `connect-setup`; the template's
/// `AmazonMSK_connect-<service>` secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    /// `connect-setup`: topics, ACLs, rewinds.
    pub admin: String,
    pub gateway: String,
    pub messaging: String,
    /// The offline-delivery function and its trigger.
    pub offline: String,
    /// The push and push-later functions and their triggers.
    pub push: String,
    /// The group-events function.
    pub group_events: String,
    /// MirrorMaker 2, which copies the peers' topics in.
    pub mirrormaker: String,
}

/// The names the policy grants on, besides the topics.
#[derive(Debug, Clone)]
pub struct Names {
    /// What the gateways' ids start with (`GATEWAY_ID`, `gw-…`): each reads its slot's
    /// partition by assignment under a group named after it, which it only looks up
    /// (`Describe`), never joins or commits.
    pub gateway_group_prefix: String,
    /// Messaging's consumer groups (`MESSAGING_GROUP_ID`, `MESSAGING_PRESENCE_GROUP_ID`).
    pub messaging_groups: Vec<String>,
    /// The triggers' consumer groups (the local event pollers' `EVENT_GROUP_ID`, the event
    /// source mappings' `ConsumerGroupId`): offline delivery's, push's, push-later's.
    pub offline_group: String,
    pub push_groups: Vec<String>,
    /// The other regions (`CONNECT_PEER_REGIONS`): messaging writes their `forward_<peer>` and
    /// reads their copies here, `<peer>.*`.
    pub peers: Vec<String>,
}

/// Every ACL of the deployment: the administrator's first, then each service's.
pub fn policy(users: &Users, topics: &Topics, names: &Names) -> Vec<Acl> {
    use Operation::*;
    use Pattern::*;
    use Resource::*;
    let mut acls = Vec::new();
    let mut allow = |user: &str, resource, pattern, name: &str, ops: &[Operation]| {
        for &operation in ops {
            acls.push(Acl {
                principal: user.to_owned(),
                resource,
                pattern,
                name: name.to_owned(),
                operation,
            });
        }
    };
    let admin = users.admin.as_str();
    allow(admin, Topic, Literal, "*", &[All]);
    allow(admin, Group, Literal, "*", &[All]);
    let cluster_ops = [
        Create,
        Alter,
        Describe,
        DescribeConfigs,
        AlterConfigs,
        IdempotentWrite,
    ];
    allow(admin, Cluster, Literal, "kafka-cluster", &cluster_ops);

    // The gateway: submits, announces connections, presence and (regions) acks; reads its
    // slot's partition of outgoing_messages by assignment (no group, no commits).
    let gateway = users.gateway.as_str();
    for t in [
        &topics.incoming,
        &topics.user_connected,
        &topics.presence,
        &topics.acks,
    ] {
        allow(gateway, Topic, Literal, t, &[Write]);
    }
    allow(gateway, Topic, Literal, &topics.outgoing, &[Read]);
    allow(
        gateway,
        Group,
        Prefixed,
        &names.gateway_group_prefix,
        &[Describe],
    );

    // Messaging: reads submissions and presence (its own and the peers' copies) in its groups;
    // writes deliveries, pushes, presence, and what the regions exchange.
    let messaging = users.messaging.as_str();
    for t in [
        &topics.incoming,
        &topics.presence,
        &topics.sequenced,
        &topics.acks,
    ] {
        allow(messaging, Topic, Literal, t, &[Read]);
    }
    for t in [
        &topics.incoming,
        &topics.outgoing,
        &topics.push,
        &topics.presence,
        &topics.sequenced,
        &topics.acks,
    ] {
        allow(messaging, Topic, Literal, t, &[Write]);
    }
    for g in &names.messaging_groups {
        allow(messaging, Group, Literal, g, &[Read]);
    }
    for peer in &names.peers {
        allow(
            messaging,
            Topic,
            Literal,
            &connect_core::regions::forward_topic(peer),
            &[Write],
        );
        allow(
            messaging,
            Topic,
            Prefixed,
            &connect_core::regions::remote_topic(peer, ""),
            &[Read],
        );
    }

    // Offline delivery: reads user_connected in its trigger's group, writes continuations.
    let offline = users.offline.as_str();
    allow(
        offline,
        Topic,
        Literal,
        &topics.user_connected,
        &[Read, Write],
    );
    allow(offline, Group, Literal, &names.offline_group, &[Read]);

    // Push: reads push_requests and push_later, holds pushes back on push_later.
    let push = users.push.as_str();
    allow(push, Topic, Literal, &topics.push, &[Read]);
    allow(push, Topic, Literal, &topics.push_later, &[Read, Write]);
    for g in &names.push_groups {
        allow(push, Group, Literal, g, &[Read]);
    }

    // Group events: system messages, submitted as a gateway does.
    allow(
        &users.group_events,
        Topic,
        Literal,
        &topics.incoming,
        &[Write],
    );

    // MirrorMaker 2 (on the peer's cluster it reads with the peer's user): reads what it
    // replicates and the groups it translates, writes the copies (`<peer>.*`) and its own
    // topics here.
    let mm = users.mirrormaker.as_str();
    allow(mm, Topic, Literal, "*", &[Read, Describe, DescribeConfigs]);
    allow(mm, Group, Literal, "*", &[Describe]);
    for peer in &names.peers {
        let copies = connect_core::regions::remote_topic(peer, "");
        allow(mm, Topic, Prefixed, &copies, &[All]);
    }
    for own in ["mm2-", "heartbeats"] {
        allow(mm, Topic, Prefixed, own, &[All]);
    }
    allow(mm, Group, Prefixed, "mm2", &[All]);
    allow(
        mm,
        Cluster,
        Literal,
        "kafka-cluster",
        &[Create, Describe, DescribeConfigs],
    );

    acls.sort();
    acls.dedup();
    acls
}

/// Creates every ACL of `acls` (idempotent: an ACL that exists is left as it is). The client
/// must be allowed to (`Alter` on the cluster: the administrator, or anyone while no ACL names
/// the cluster).
pub async fn ensure_acls(kafka: &KafkaConfig, acls: &[Acl]) -> Result<(), AdminError> {
    if acls.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = kafka.client().create()?;
    let acls = acls.to_vec();
    tokio::task::spawn_blocking(move || create_acls(&admin, &acls, Duration::from_secs(30)))
        .await
        .map_err(|e| AdminError::Acl(format!("the ACL request's thread: {e}")))?
}

/// Owns an array of librdkafka ACL bindings.
struct Bindings(Vec<*mut rd::rd_kafka_AclBinding_t>);

impl Drop for Bindings {
    fn drop(&mut self) {
        for &b in &self.0 {
            // SAFETY: each was made by rd_kafka_AclBinding_new and is destroyed once, here;
            // rd_kafka_CreateAcls copies what it needs.
            unsafe { rd::rd_kafka_AclBinding_destroy(b) };
        }
    }
}

fn c_string(s: &str) -> Result<CString, AdminError> {
    CString::new(s).map_err(|_| AdminError::Acl(format!("{s:?} has a NUL byte")))
}

fn binding(acl: &Acl) -> Result<*mut rd::rd_kafka_AclBinding_t, AdminError> {
    use rd::rd_kafka_AclOperation_t as Op;
    let restype = match acl.resource {
        Resource::Topic => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
        Resource::Group => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP,
        Resource::Cluster => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_BROKER,
    };
    let pattern = match acl.pattern {
        Pattern::Literal => rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        Pattern::Prefixed => rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
    };
    let operation = match acl.operation {
        Operation::All => Op::RD_KAFKA_ACL_OPERATION_ALL,
        Operation::Read => Op::RD_KAFKA_ACL_OPERATION_READ,
        Operation::Write => Op::RD_KAFKA_ACL_OPERATION_WRITE,
        Operation::Create => Op::RD_KAFKA_ACL_OPERATION_CREATE,
        Operation::Delete => Op::RD_KAFKA_ACL_OPERATION_DELETE,
        Operation::Alter => Op::RD_KAFKA_ACL_OPERATION_ALTER,
        Operation::Describe => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE,
        Operation::DescribeConfigs => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
        Operation::AlterConfigs => Op::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
        Operation::IdempotentWrite => Op::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
    };
    let name = c_string(&acl.name)?;
    let principal = c_string(&format!("User:{}", acl.principal))?;
    let host = c_string("*")?;
    let mut err = [0 as std::os::raw::c_char; 512];
    // SAFETY: every pointer is a NUL-terminated string that outlives the call (librdkafka
    // copies them), and `err` is a writable buffer of the length passed.
    let b = unsafe {
        rd::rd_kafka_AclBinding_new(
            restype,
            name.as_ptr(),
            pattern,
            principal.as_ptr(),
            host.as_ptr(),
            operation,
            rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if b.is_null() {
        // SAFETY: librdkafka wrote a NUL-terminated message into `err`.
        let why = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        return Err(AdminError::Acl(format!("{acl:?}: {why}")));
    }
    Ok(b)
}

/// rd_kafka_CreateAcls on a queue of its own, waited for here (blocking).
fn create_acls(
    admin: &AdminClient<DefaultClientContext>,
    acls: &[Acl],
    timeout: Duration,
) -> Result<(), AdminError> {
    let mut bindings = Bindings(Vec::with_capacity(acls.len()));
    for acl in acls {
        bindings.0.push(binding(acl)?);
    }
    let rk = admin.inner().native_ptr();
    // SAFETY: `rk` is the admin client's live handle (borrowed for this call); the queue is
    // ours and destroyed below; the bindings live until `bindings` drops, after the request
    // was made (librdkafka copies them); the event is destroyed once read.
    unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_CreateAcls(
            rk,
            bindings.0.as_mut_ptr(),
            bindings.0.len(),
            std::ptr::null(),
            queue,
        );
        let event = rd::rd_kafka_queue_poll(queue, timeout.as_millis() as i32);
        let outcome = read_result(event, acls);
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        outcome
    }
}

/// The outcome of a CreateAcls result event: the request's error, or the first ACL's.
///
/// # Safety
/// `event` is null or a live event from the CreateAcls request for `acls`.
unsafe fn read_result(event: *mut rd::rd_kafka_event_t, acls: &[Acl]) -> Result<(), AdminError> {
    if event.is_null() {
        return Err(AdminError::Acl("no answer to CreateAcls in time".into()));
    }
    if rd::rd_kafka_event_type(event) != rd::RD_KAFKA_EVENT_CREATEACLS_RESULT {
        return Err(AdminError::Acl("an unexpected answer to CreateAcls".into()));
    }
    if rd::rd_kafka_event_error(event) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        let why = CStr::from_ptr(rd::rd_kafka_event_error_string(event)).to_string_lossy();
        return Err(AdminError::Acl(format!("CreateAcls: {why}")));
    }
    let result = rd::rd_kafka_event_CreateAcls_result(event);
    let mut n = 0usize;
    let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut n);
    for i in 0..n {
        let error = rd::rd_kafka_acl_result_error(*results.add(i));
        if !error.is_null() {
            let why = CStr::from_ptr(rd::rd_kafka_error_string(error)).to_string_lossy();
            let acl = acls.get(i).map(|a| format!("{a:?}")).unwrap_or_default();
            return Err(AdminError::Acl(format!("{acl}: {why}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users {
            admin: "admin".into(),
            gateway: "gateway".into(),
            messaging: "messaging".into(),
            offline: "offline".into(),
            push: "push".into(),
            group_events: "group-events".into(),
            mirrormaker: "mirrormaker".into(),
        }
    }

    fn topics() -> Topics {
        Topics {
            incoming: "incoming_messages".into(),
            outgoing: "outgoing_messages".into(),
            user_connected: "user_connected".into(),
            sequenced: "sequenced_messages".into(),
            acks: "acks".into(),
            push: "push_requests".into(),
            push_later: "push_later".into(),
            presence: "presence".into(),
        }
    }

    fn names() -> Names {
        Names {
            gateway_group_prefix: "gw-".into(),
            messaging_groups: vec!["messaging".into(), "presence".into()],
            offline_group: "lambda-offline-delivery".into(),
            push_groups: vec!["lambda-push".into(), "lambda-push-later".into()],
            peers: vec!["b".into()],
        }
    }

    /// Whether `user` may do `op` on topic or group `name` under `acls` (as the broker decides
    /// for allow rules: a literal name, `*`, or a prefix; `All` covers every operation).
    fn allowed(acls: &[Acl], user: &str, resource: Resource, name: &str, op: Operation) -> bool {
        acls.iter().any(|a| {
            a.principal == user
                && a.resource == resource
                && (a.operation == op || a.operation == Operation::All)
                && match a.pattern {
                    Pattern::Literal => a.name == name || a.name == "*",
                    Pattern::Prefixed => name.starts_with(&a.name),
                }
        })
    }

    #[test]
    fn each_service_may_do_what_it_needs_and_nothing_of_the_others() {
        use Operation::*;
        use Resource::*;
        let acls = policy(&users(), &topics(), &names());
        let can = |u: &str, r, n: &str, op| allowed(&acls, u, r, n, op);
        // The gateway submits and reads its deliveries; it cannot read submissions, forge
        // deliveries or pushes, or join messaging's group.
        assert!(can("gateway", Topic, "incoming_messages", Write));
        assert!(can("gateway", Topic, "outgoing_messages", Read));
        assert!(can("gateway", Topic, "user_connected", Write));
        assert!(!can("gateway", Topic, "incoming_messages", Read));
        assert!(!can("gateway", Topic, "outgoing_messages", Write));
        assert!(!can("gateway", Topic, "push_requests", Write));
        assert!(!can("gateway", Topic, "user_connected", Read));
        assert!(!can("gateway", Group, "messaging", Read));
        assert!(can("gateway", Group, "gw-8080", Describe));
        assert!(!can("gateway", Group, "gw-8080", Read));
        // Messaging: its groups, its topics, the peers' copies and its forward topic.
        assert!(can("messaging", Topic, "incoming_messages", Read));
        assert!(can("messaging", Group, "messaging", Read));
        assert!(can("messaging", Group, "presence", Read));
        assert!(can("messaging", Topic, "b.sequenced_messages", Read));
        assert!(can("messaging", Topic, "forward_b", Write));
        assert!(!can("messaging", Topic, "user_connected", Read));
        assert!(!can("messaging", Topic, "b.sequenced_messages", Write));
        // The functions: each its own topics and trigger group.
        assert!(can("offline", Topic, "user_connected", Read));
        assert!(can("offline", Group, "lambda-offline-delivery", Read));
        assert!(!can("offline", Topic, "outgoing_messages", Write));
        assert!(can("push", Topic, "push_requests", Read));
        assert!(!can("push", Topic, "incoming_messages", Write));
        assert!(can("group-events", Topic, "incoming_messages", Write));
        assert!(!can("group-events", Topic, "incoming_messages", Read));
        // Only the administrator may make topics or ACLs.
        assert!(can("admin", Topic, "anything", Create));
        assert!(acls
            .iter()
            .filter(|a| a.resource == Cluster && a.operation == Alter)
            .all(|a| a.principal == "admin"));
        // Every service's rule is on a name; only the administrator's and MirrorMaker's use `*`.
        assert!(acls
            .iter()
            .filter(|a| a.name == "*")
            .all(|a| a.principal == "admin" || a.principal == "mirrormaker"));
    }

    #[test]
    fn the_administrators_rules_come_with_every_policy() {
        let acls = policy(
            &users(),
            &topics(),
            &Names {
                peers: vec![],
                ..names()
            },
        );
        assert!(acls.iter().any(|a| a.principal == "admin"
            && a.resource == Resource::Topic
            && a.name == "*"
            && a.operation == Operation::All));
        assert!(!acls.iter().any(|a| a.name.starts_with("b.")));
    }
}
