//! `template.yaml` against the code: every function, route, table, key, index and topic the code
//! uses is in the template, with the settings the code needs, and the template declares nothing
//! the code does not know (a function without a crate, a route without a handler, an
//! environment variable no code reads). No stack needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

/// The test process's settings.
fn settings() -> connect_config::Settings {
    connect_config::Settings::from_process()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn template() -> Value {
    let text = std::fs::read_to_string(root().join("template.yaml")).expect("template.yaml");
    serde_yaml_ng::from_str(&text).expect("template.yaml is YAML")
}

/// `v[a][b]…`, Null when any step is missing.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter()
        .fold(v, |v, k| v.get(*k).unwrap_or(&Value::Null))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// A `!Ref X` value's target.
fn ref_target(v: &Value) -> Option<&str> {
    match v {
        Value::Tagged(t) if t.tag == "Ref" => t.value.as_str(),
        _ => None,
    }
}

/// A list of `{<key>: k, <value>: v}` entries (attribute definitions, load balancer attributes,
/// metric dimensions, container environments) as k → v; empty when the list is missing.
fn pairs<'a>(list: &'a Value, key: &str, value: &str) -> BTreeMap<&'a str, &'a Value> {
    list.as_sequence()
        .into_iter()
        .flatten()
        .map(|e| (s(at(e, &[key])), at(e, &[value])))
        .collect()
}

/// The port of a `host:port` listen address.
fn port_of(addr: &Value) -> u16 {
    s(addr)
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// A `!Sub "…"` value's string.
fn sub_string(v: &Value) -> Option<&str> {
    match v {
        Value::Tagged(t) if t.tag == "Sub" => t.value.as_str(),
        _ => None,
    }
}

fn resources_of_type<'a>(t: &'a Value, kind: &str) -> BTreeMap<String, &'a Value> {
    at(t, &["Resources"])
        .as_mapping()
        .expect("Resources")
        .iter()
        .filter(|(_, r)| s(at(r, &["Type"])) == kind)
        .map(|(k, r)| (s(k).to_owned(), r))
        .collect()
}

/// Function resources by the binary they run.
fn functions(t: &Value) -> BTreeMap<String, &Value> {
    resources_of_type(t, "AWS::Serverless::Function")
        .into_values()
        .map(|f| {
            (
                s(at(f, &["Metadata", "BuildProperties", "Binary"])).to_owned(),
                f,
            )
        })
        .collect()
}

fn env_of(f: &Value) -> BTreeMap<String, Value> {
    at(f, &["Properties", "Environment", "Variables"])
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (s(k).to_owned(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn events_of<'a>(f: &'a Value, kind: &str) -> Vec<&'a Value> {
    at(f, &["Properties", "Events"])
        .as_mapping()
        .map(|m| {
            m.values()
                .filter(|e| s(at(e, &["Type"])) == kind)
                .map(|e| at(e, &["Properties"]))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_function_crate_is_deployed_and_every_deployed_function_has_a_crate() {
    let t = template();
    let deployed: BTreeSet<String> = functions(&t).into_keys().collect();
    let crates: BTreeSet<String> = std::fs::read_dir(root().join("functions"))
        .expect("functions/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(deployed, crates);
    for f in functions(&t).values() {
        assert_eq!(s(at(f, &["Metadata", "BuildMethod"])), "rust-cargolambda");
    }
}

#[test]
fn every_route_is_served_by_its_function_and_no_other_is_declared() {
    let t = template();
    let mut declared: BTreeSet<(String, String, String)> = BTreeSet::new();
    for (binary, f) in functions(&t) {
        for e in events_of(f, "HttpApi") {
            assert_eq!(ref_target(at(e, &["ApiId"])), Some("HttpApi"));
            declared.insert((
                s(at(e, &["Method"])).to_owned(),
                s(at(e, &["Path"])).to_owned(),
                binary.clone(),
            ));
        }
    }
    let code: BTreeSet<(String, String, String)> = connect_api::ROUTES
        .iter()
        .map(|r| (r.method.into(), r.path.into(), r.function.into()))
        .collect();
    assert_eq!(declared, code);
    // A named stage: the handlers match routes whatever the stage (crates/api).
    assert_eq!(
        ref_target(at(
            resources_of_type(&t, "AWS::Serverless::HttpApi")["HttpApi"],
            &["Properties", "StageName"]
        )),
        Some("Stage")
    );
}

/// (attribute, type, key type) of a key schema, with the attribute types declared.
fn keys(table: &Value, schema: &Value) -> Vec<(String, String, String)> {
    let types = pairs(
        at(table, &["Properties", "AttributeDefinitions"]),
        "AttributeName",
        "AttributeType",
    );
    schema
        .as_sequence()
        .expect("KeySchema")
        .iter()
        .map(|k| {
            let name = s(at(k, &["AttributeName"]));
            (
                name.to_owned(),
                types.get(name).map_or("undeclared", |t| s(t)).to_owned(),
                s(at(k, &["KeyType"])).to_owned(),
            )
        })
        .collect()
}

fn key(name: &str, ty: &str, kind: &str) -> (String, String, String) {
    (name.into(), ty.into(), kind.into())
}

#[test]
fn the_tables_have_the_keys_indexes_and_streams_the_code_uses() {
    let t = template();
    // Global tables with fixed names, so a stack in another region (which does not create
    // them) reaches the replicas by the same names.
    let tables = resources_of_type(&t, "AWS::DynamoDB::GlobalTable");
    let globals = at(&t, &["Globals", "Function", "Environment", "Variables"]);
    let table = |var: &str| -> &Value {
        let name = sub_string(at(globals, &[var]))
            .unwrap_or_else(|| panic!("{var} is not a !Sub table name"));
        let table = tables
            .values()
            .find(|t| sub_string(at(t, &["Properties", "TableName"])) == Some(name))
            .unwrap_or_else(|| panic!("{var} → {name}: no such table"));
        // Replication needs a stream of both images, and every replica keeps backups.
        assert_eq!(
            s(at(
                table,
                &["Properties", "StreamSpecification", "StreamViewType"]
            )),
            "NEW_AND_OLD_IMAGES",
            "{name}"
        );
        assert!(
            at(table, &["Properties", "Replicas"])
                .as_sequence()
                .is_some_and(|r| !r.is_empty()),
            "{name} has replicas"
        );
        // Messaging gets the same name.
        assert_eq!(
            sub_string(&container_env(&t, "MessagingTaskDefinition", "messaging")[var]),
            Some(name),
            "messaging's {var}"
        );
        table
    };
    let chat = table("CHAT_TABLE");
    assert_eq!(
        keys(chat, at(chat, &["Properties", "KeySchema"])),
        [key("conversation", "S", "HASH"), key("seq", "N", "RANGE")]
    );
    let sequences = table("SEQUENCE_TABLE");
    assert_eq!(
        keys(sequences, at(sequences, &["Properties", "KeySchema"])),
        [key("conversation", "S", "HASH")]
    );
    let groups = table("GROUP_TABLE");
    assert_eq!(
        keys(groups, at(groups, &["Properties", "KeySchema"])),
        [key("group", "S", "HASH"), key("item", "S", "RANGE")]
    );
    let index = at(groups, &["Properties", "GlobalSecondaryIndexes"])
        .as_sequence()
        .and_then(|ix| {
            ix.iter()
                .find(|i| s(at(i, &["IndexName"])) == connect_dynamo::groups::BY_USER)
        })
        .expect("the by_user index");
    assert_eq!(
        keys(groups, at(index, &["KeySchema"])),
        [key("user", "S", "HASH"), key("group", "S", "RANGE")]
    );
    // Offline delivery reads the membership version a user joined at from the index.
    assert_eq!(s(at(index, &["Projection", "ProjectionType"])), "INCLUDE");
    assert!(at(index, &["Projection", "NonKeyAttributes"])
        .as_sequence()
        .is_some_and(|a| a.iter().any(|v| s(v) == "since")));
    let inbox = table("INBOX_TABLE");
    assert_eq!(
        keys(inbox, at(inbox, &["Properties", "KeySchema"])),
        [key("owner", "S", "HASH"), key("item", "S", "RANGE")]
    );
    // A page of a user's direct conversations is one query of the places' recency index.
    let places = table("PLACES_TABLE");
    assert_eq!(
        keys(places, at(places, &["Properties", "KeySchema"])),
        [key("owner", "S", "HASH"), key("conversation", "S", "RANGE")]
    );
    let recent = at(places, &["Properties", "GlobalSecondaryIndexes"])
        .as_sequence()
        .and_then(|ix| {
            ix.iter()
                .find(|i| s(at(i, &["IndexName"])) == connect_dynamo::inbox::RECENT)
        })
        .expect("the recent index");
    assert_eq!(
        keys(places, at(recent, &["KeySchema"])),
        [key("owner", "S", "HASH"), key("at", "N", "RANGE")]
    );
    assert!(at(recent, &["Projection", "NonKeyAttributes"])
        .as_sequence()
        .is_some_and(|a| a.iter().any(|v| s(v) == "seq")));
    // Group admin's quotas: a counter per key, dropped by TTL once its window is over.
    let quota_table = sub_string(at(globals, &["QUOTA_TABLE"])).expect("QUOTA_TABLE");
    let quotas = tables
        .values()
        .find(|t| sub_string(at(t, &["Properties", "TableName"])) == Some(quota_table))
        .expect("the quota table");
    assert_eq!(
        keys(quotas, at(quotas, &["Properties", "KeySchema"])),
        [key("key", "S", "HASH")]
    );
    let ttl = at(quotas, &["Properties", "TimeToLiveSpecification"]);
    assert_eq!(
        s(at(ttl, &["AttributeName"])),
        connect_dynamo::quotas::EXPIRES
    );
    assert_eq!(at(ttl, &["Enabled"]).as_bool(), Some(true));
    // The group-events function reads old and new images (who removed whom).
    assert_eq!(
        s(at(
            groups,
            &["Properties", "StreamSpecification", "StreamViewType"]
        )),
        "NEW_AND_OLD_IMAGES"
    );
}

#[test]
fn the_kafka_functions_use_the_codes_topics() {
    let t = template();
    let fns = functions(&t);
    let topics = connect_kafka::Topics::from_settings(&settings());
    let events = &fns["group-events"];
    assert_eq!(
        s(&env_of(events)["KAFKA_INCOMING_TOPIC"]),
        topics.incoming,
        "group events go to incoming_messages"
    );
    assert!(env_of(events).contains_key("KAFKA_BROKERS"));
    assert_eq!(s(&env_of(events)["KAFKA_SECURITY_PROTOCOL"]), "sasl_ssl");
    assert!(env_of(events).contains_key("KAFKA_SASL_SECRET_ARN"));
    let stream = events_of(events, "DynamoDB");
    assert_eq!(
        stream.len(),
        1,
        "group-events reads the group table's stream"
    );
    let offline = &fns["offline-delivery"];
    let msk = events_of(offline, "MSK");
    assert_eq!(
        msk.len(),
        1,
        "offline-delivery is triggered by user_connected"
    );
    let listed: Vec<&str> = at(msk[0], &["Topics"])
        .as_sequence()
        .map(|t| t.iter().map(s).collect())
        .unwrap_or_default();
    assert_eq!(listed, [topics.user_connected.as_str()]);
    // MSK takes SCRAM users only: the trigger signs in as the function's own user.
    let access = at(msk[0], &["SourceAccessConfigurations"])
        .as_sequence()
        .expect("SourceAccessConfigurations");
    assert!(access
        .iter()
        .any(|a| s(at(a, &["Type"])) == "SASL_SCRAM_512_AUTH"
            && ref_target(at(a, &["URI"])) == Some("MskOfflineSecret")));
    // Its continuations go back to the same topic, behind everyone else's records.
    assert_eq!(
        s(&env_of(offline)["KAFKA_USER_CONNECTED_TOPIC"]),
        topics.user_connected
    );
    assert!(env_of(offline).contains_key("KAFKA_SASL_SECRET_ARN"));
    // Bounded: a failing batch is split, retried a few times, then parked; never retried
    // forever in front of every other user's records.
    assert_eq!(
        at(msk[0], &["BisectBatchOnFunctionError"]).as_bool(),
        Some(true)
    );
    let retries = at(msk[0], &["MaximumRetryAttempts"]).as_i64().unwrap_or(-1);
    assert!(
        (0..=10).contains(&retries),
        "MaximumRetryAttempts {retries}"
    );
    let parked = at(msk[0], &["DestinationConfig", "OnFailure", "Destination"]);
    let queue = match parked {
        Value::Tagged(t) if t.tag == "!GetAtt" => t.value.as_str(),
        _ => None,
    };
    assert_eq!(queue, Some("OfflineDeliveryFailures.Arn"), "{parked:?}");
}

/// Each file below `dirs` (from the workspace root; `target/` left out), as (path, text).
fn sources(dirs: &[&str]) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    walk(&path, out);
                }
            } else {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        walk(&root().join(dir), &mut out);
    }
    out
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e == ext)
}

/// Every string literal in the code that looks like an environment variable name.
fn names_in_code() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let dirs = [
        "crates",
        "functions",
        "gateway",
        "messaging",
        "tools/setup",
        "deploy",
    ];
    for (path, text) in sources(&dirs) {
        if has_extension(&path, "sh") {
            // A shell entrypoint (deploy/mirrormaker.sh) reads `${NAME…}`.
            for piece in text.split("${").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name.len() > 2 {
                    names.insert(name);
                }
            }
        } else if has_extension(&path, "rs") {
            for literal in text.split('"').skip(1).step_by(2) {
                if literal.len() > 2
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                {
                    names.insert(literal.to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn every_environment_variable_in_the_template_is_read_by_the_code() {
    let t = template();
    let mut known = names_in_code();
    // Read by a library: tracing-subscriber's filter (connect_service::telemetry).
    known.insert("RUST_LOG".into());
    let mut declared: Vec<(String, String)> =
        at(&t, &["Globals", "Function", "Environment", "Variables"])
            .as_mapping()
            .expect("global variables")
            .keys()
            .map(|k| ("Globals".to_owned(), s(k).to_owned()))
            .collect();
    for (binary, f) in functions(&t) {
        declared.extend(env_of(f).into_keys().map(|k| (binary.clone(), k)));
    }
    for (task, container) in containers(&t) {
        for list in ["Environment", "Secrets"] {
            for v in at(container, &[list]).as_sequence().into_iter().flatten() {
                declared.push((format!("{task}/{list}"), s(at(v, &["Name"])).to_owned()));
            }
        }
    }
    let stale: Vec<_> = declared
        .iter()
        .filter(|(_, name)| !known.contains(name))
        .collect();
    assert!(stale.is_empty(), "no code reads {stale:?}");
}

#[test]
fn each_function_has_the_settings_it_cannot_run_without() {
    let t = template();
    let fns = functions(&t);
    // In production (CONNECT_ENV, global) a missing secret is an error, not the dev default.
    assert_eq!(
        s(at(
            &t,
            &[
                "Globals",
                "Function",
                "Environment",
                "Variables",
                "CONNECT_ENV"
            ]
        )),
        "production"
    );
    // Secrets come as Secrets Manager ARNs (connect-secrets), never as values.
    for (binary, needs) in [
        ("history", &["CONNECT_JWT_SECRET_ARN"][..]),
        ("groups", &["CONNECT_JWT_SECRET_ARN"]),
        ("inbox", &["CONNECT_JWT_SECRET_ARN"]),
        (
            "group-events",
            &[
                "KAFKA_BROKERS",
                "KAFKA_INCOMING_TOPIC",
                "KAFKA_SECURITY_PROTOCOL",
                "KAFKA_SASL_SECRET_ARN",
            ],
        ),
        (
            "offline-delivery",
            &["REDIS_URL", "REDIS_CLUSTER", "CONNECT_INTERNAL_TOKEN_ARN"],
        ),
    ] {
        let env = env_of(fns[binary]);
        for var in needs {
            assert!(env.contains_key(*var), "{binary} needs {var}");
        }
        for (var, value) in &env {
            if var.ends_with("_ARN") {
                assert!(
                    ref_target(value).is_some(),
                    "{binary}: {var} is a !Ref to a secret"
                );
            }
            assert!(
                !matches!(
                    var.as_str(),
                    "CONNECT_JWT_SECRET" | "CONNECT_INTERNAL_TOKEN" | "KAFKA_SASL_PASSWORD"
                ),
                "{binary}: {var} as a plain value"
            );
        }
    }
}

/// The containers of every ECS task definition, by (task definition, container) name.
fn containers(t: &Value) -> Vec<(String, &Value)> {
    resources_of_type(t, "AWS::ECS::TaskDefinition")
        .into_iter()
        .flat_map(|(name, task)| {
            at(task, &["Properties", "ContainerDefinitions"])
                .as_sequence()
                .into_iter()
                .flatten()
                .map(move |c| (format!("{name}/{}", s(at(c, &["Name"]))), c))
        })
        .collect()
}

/// A container's environment (and secrets, as their `ValueFrom`) by name.
fn container_env(t: &Value, task: &str, container: &str) -> BTreeMap<String, Value> {
    let c = containers(t)
        .into_iter()
        .find(|(n, _)| n == &format!("{task}/{container}"))
        .unwrap_or_else(|| panic!("no container {task}/{container}"))
        .1;
    [("Environment", "Value"), ("Secrets", "ValueFrom")]
        .into_iter()
        .flat_map(|(list, value)| pairs(at(c, &[list]), "Name", value))
        .map(|(name, v)| (name.to_owned(), v.clone()))
        .collect()
}

/// A `!Ref`ed parameter's default.
fn param_default<'a>(t: &'a Value, v: &Value) -> &'a Value {
    let name = ref_target(v).unwrap_or_else(|| panic!("{v:?} is not a !Ref"));
    at(t, &["Parameters", name, "Default"])
}

#[test]
fn the_services_speak_tls_to_msk_and_to_a_redis_cluster_with_their_secrets_injected() {
    let t = template();
    for (task, container) in [
        ("GatewayTaskDefinition", "gateway"),
        ("MessagingTaskDefinition", "messaging"),
        ("MessagingTaskDefinition", "setup"),
    ] {
        let env = container_env(&t, task, container);
        assert_eq!(
            s(&env["KAFKA_SECURITY_PROTOCOL"]),
            "sasl_ssl",
            "{container}"
        );
        assert_eq!(
            s(&env["KAFKA_SASL_MECHANISM"]),
            "SCRAM-SHA-512",
            "{container}"
        );
        let own = match container {
            "gateway" => "MskGatewaySecret",
            "messaging" => "MskMessagingSecret",
            _ => "MskScramSecret",
        };
        for secret in ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"] {
            assert!(
                sub_string(&env[secret]).is_some_and(|v| v.starts_with(&format!("${{{own}}}:"))),
                "{container}: {secret} from its own SCRAM secret, {own}"
            );
        }
        if container != "setup" {
            assert!(
                sub_string(&env["REDIS_URL"]).is_some_and(|u| u.starts_with("rediss://")),
                "{container}: Redis over TLS"
            );
            assert_eq!(s(&env["REDIS_CLUSTER"]), "true", "{container}");
        }
    }
    let gateway = container_env(&t, "GatewayTaskDefinition", "gateway");
    assert_eq!(
        ref_target(&gateway["CONNECT_JWT_SECRET"]),
        Some("JwtSecret")
    );
    assert_eq!(
        ref_target(&gateway["CONNECT_INTERNAL_TOKEN"]),
        Some("InternalToken")
    );
    // Behind the ALB the per-address cap counts the clients the ALB saw, and only the ALB (in
    // the VPC) is believed.
    assert_eq!(
        ref_target(&gateway["GATEWAY_TRUSTED_PROXIES"]),
        Some("VpcCidr")
    );
    // Gateways and the HTTP API's functions check tokens by the same rules.
    let globals = at(&t, &["Globals", "Function", "Environment", "Variables"]);
    for (var, parameter) in [
        ("CONNECT_JWT_ISSUER", "JwtIssuer"),
        ("CONNECT_JWT_AUDIENCE", "JwtAudience"),
        ("CONNECT_JWT_MAX_LIFETIME_SECS", "JwtMaxLifetimeSecs"),
    ] {
        assert_eq!(ref_target(&gateway[var]), Some(parameter), "gateway {var}");
        assert_eq!(
            ref_target(at(globals, &[var])),
            Some(parameter),
            "functions {var}"
        );
        assert!(
            at(&t, &["Parameters", parameter]).is_mapping(),
            "{parameter}"
        );
    }
    // The setup container makes the topics messaging and the gateways use, with the
    // partitions the gateways take as slots; the template makes the tables.
    let setup = container_env(&t, "MessagingTaskDefinition", "setup");
    assert_eq!(s(&setup["SETUP_TABLES"]), "false");
    assert_eq!(setup["OUTGOING_PARTITIONS"], gateway["OUTGOING_PARTITIONS"]);
}

#[test]
fn the_alb_reaches_only_the_gateways_public_port_and_outlives_their_pings() {
    let t = template();
    let gateway = container_env(&t, "GatewayTaskDefinition", "gateway");
    let public = port_of(&gateway["GATEWAY_ADDR"]);
    let management = port_of(&gateway["GATEWAY_MANAGEMENT_ADDR"]);
    assert_ne!(public, management);
    let targets =
        &resources_of_type(&t, "AWS::ElasticLoadBalancingV2::TargetGroup")["GatewayTargets"];
    assert_eq!(
        at(targets, &["Properties", "Port"]).as_u64(),
        Some(u64::from(public))
    );
    assert_eq!(
        s(at(targets, &["Properties", "HealthCheckPath"])),
        "/healthz"
    );
    let attrs = pairs(
        at(targets, &["Properties", "TargetGroupAttributes"]),
        "Key",
        "Value",
    );
    assert_eq!(s(attrs["stickiness.enabled"]), "true");
    // The service registers only the public port with the load balancer.
    let service = &resources_of_type(&t, "AWS::ECS::Service")["GatewayService"];
    let registered: Vec<u64> = at(service, &["Properties", "LoadBalancers"])
        .as_sequence()
        .expect("LoadBalancers")
        .iter()
        .filter_map(|l| at(l, &["ContainerPort"]).as_u64())
        .collect();
    assert_eq!(registered, [u64::from(public)]);
    // The management port admits only the functions' security group.
    let ingress = at(
        resources_of_type(&t, "AWS::EC2::SecurityGroup")["GatewaySecurityGroup"],
        &["Properties", "SecurityGroupIngress"],
    )
    .as_sequence()
    .expect("ingress");
    for rule in ingress {
        let port = at(rule, &["FromPort"]).as_u64();
        let from = ref_target(at(rule, &["SourceSecurityGroupId"]));
        if port == Some(u64::from(management)) {
            assert_eq!(from, Some("FunctionSecurityGroup"));
        } else {
            assert_eq!(port, Some(u64::from(public)));
            assert_eq!(from, Some("AlbSecurityGroup"));
        }
    }
    // A WebSocket that only pings is not cut by the ALB: its idle timeout is above the
    // gateway's ping interval and idle timeout (defaults 20 s and 60 s).
    let alb = &resources_of_type(&t, "AWS::ElasticLoadBalancingV2::LoadBalancer")["Alb"];
    let attrs = pairs(
        at(alb, &["Properties", "LoadBalancerAttributes"]),
        "Key",
        "Value",
    );
    let idle = attrs
        .get("idle_timeout.timeout_seconds")
        .map(|v| param_default(&t, v).as_u64().expect("a number"))
        .expect("an idle timeout");
    assert!(idle > 60, "ALB idle timeout {idle} s");
}

#[test]
fn messaging_scales_on_its_own_consumer_groups_lag() {
    let t = template();
    let policy =
        &resources_of_type(&t, "AWS::ApplicationAutoScaling::ScalingPolicy")["MessagingLagPolicy"];
    let dims = pairs(
        at(
            policy,
            &[
                "Properties",
                "TargetTrackingScalingPolicyConfiguration",
                "CustomizedMetricSpecification",
                "Dimensions",
            ],
        ),
        "Name",
        "Value",
    );
    assert_eq!(
        s(dims["Topic"]),
        connect_kafka::Topics::from_settings(&settings()).incoming
    );
    // MESSAGING_GROUP_ID's default (messaging/src/config.rs), which the task does not override.
    assert_eq!(s(dims["Consumer Group"]), "messaging");
    assert!(!container_env(&t, "MessagingTaskDefinition", "messaging")
        .contains_key("MESSAGING_GROUP_ID"));
    // The gateways' connection metric is the one the gateway logs (gateway/src/emf.rs).
    let connections = &resources_of_type(&t, "AWS::ApplicationAutoScaling::ScalingPolicy")
        ["GatewayConnectionsPolicy"];
    let metric = at(
        connections,
        &[
            "Properties",
            "TargetTrackingScalingPolicyConfiguration",
            "CustomizedMetricSpecification",
        ],
    );
    assert_eq!(s(at(metric, &["Namespace"])), "ConnectChat");
    assert_eq!(s(at(metric, &["MetricName"])), "Connections");
    let dimensions = pairs(at(metric, &["Dimensions"]), "Name", "Value");
    assert_eq!(
        sub_string(dimensions["Service"]),
        sub_string(&container_env(&t, "GatewayTaskDefinition", "gateway")["GATEWAY_EMF_SERVICE"])
    );
}

/// A container's environment value as text (`!Ref X` as `Ref:X`, `!Sub "…"` as its string).
fn env_text(v: &Value) -> String {
    match (ref_target(v), sub_string(v)) {
        (Some(r), _) => format!("Ref:{r}"),
        (_, Some(sub)) => sub.to_owned(),
        _ => s(v).to_owned(),
    }
}

#[test]
fn a_second_region_is_this_template_with_a_peer_and_mirrormaker_carries_the_codes_topics() {
    let t = template();
    // Every part that forwards, replicates or mirrors knows both regions.
    for (task, container) in [
        ("GatewayTaskDefinition", "gateway"),
        ("MessagingTaskDefinition", "setup"),
        ("MessagingTaskDefinition", "messaging"),
        ("MirrorMakerTaskDefinition", "mirrormaker"),
    ] {
        let env = container_env(&t, task, container);
        assert_eq!(
            env_text(&env["CONNECT_REGION"]),
            "Ref:AWS::Region",
            "{task}/{container}"
        );
        assert_eq!(
            env_text(&env["CONNECT_PEER_REGIONS"]),
            "Ref:PeerRegion",
            "{task}/{container}"
        );
    }
    // MirrorMaker 2 and the peering routes exist only with a peer.
    let resources = at(&t, &["Resources"]).as_mapping().expect("resources");
    for name in [
        "MirrorMakerService",
        "MirrorMakerTaskDefinition",
        "PeerRoute1",
        "PeerRoute2",
        "PeerRoute3",
        "MskPeerIngress",
    ] {
        let r = resources.get(name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(s(at(r, &["Condition"])), "HasPeer", "{name}");
    }
    // The peer reads this region's MSK: its brokers and secret are outputs.
    for output in [
        "MskBootstrapBrokers",
        "MskScramSecretArn",
        "MskSecretKeyArn",
        "VpcId",
        "VpcCidr",
    ] {
        assert!(
            !at(&t, &["Outputs", output]).is_null(),
            "no output {output}"
        );
    }
    // The topics MirrorMaker 2 carries, on AWS and in `make regions`, are the code's, and
    // messaging reads them under MirrorMaker 2's default names.
    let topics = connect_kafka::Topics::from_settings(&settings());
    let wanted = |here: &str| {
        format!(
            "{}, {}, {}",
            topics.sequenced,
            topics.acks,
            connect_core::regions::forward_topic(here)
        )
    };
    let aws =
        std::fs::read_to_string(root().join("deploy/mirrormaker.sh")).expect("mirrormaker.sh");
    assert!(
        aws.contains(&format!("$peer->$here.topics = {}", wanted("$here"))),
        "deploy/mirrormaker.sh"
    );
    let local = std::fs::read_to_string(root().join("scripts/mirrormaker/mm2.properties.in"))
        .expect("mm2.properties.in");
    assert!(
        local.contains(&format!("@A@->@B@.topics = {}", wanted("@B@"))),
        "mm2.properties.in"
    );
    assert!(
        local.contains(&format!("@B@->@A@.topics = {}", wanted("@A@"))),
        "mm2.properties.in"
    );
    let regions = connect_core::regions::Regions::parse("a", "b").expect("regions");
    assert_eq!(
        regions.mirrored_topics(&topics.sequenced, &topics.acks),
        vec![(
            "b.forward_a".to_owned(),
            format!("b.{}", topics.sequenced),
            format!("b.{}", topics.acks)
        )]
    );
}

/// Every metric name the code records (`counter!`/`gauge!`/`histogram!` literals).
fn metrics_in_code() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (path, text) in sources(&["crates", "gateway/src", "messaging/src"]) {
        if !has_extension(&path, "rs") {
            continue;
        }
        for kind in ["counter!(", "gauge!(", "histogram!("] {
            for piece in text.split(kind).skip(1) {
                if let Some(name) = piece.trim_start().strip_prefix('"') {
                    names.insert(name.split('"').next().unwrap_or_default().to_owned());
                }
            }
        }
    }
    names
}

/// The alert rules (deploy/prometheus/alerts.yml) watch metrics the code records, and each
/// has a severity and a section of the runbook that says what to do.
#[test]
fn every_alert_watches_a_real_metric_and_has_its_runbook_section() {
    let rules: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    let runbook = std::fs::read_to_string(root().join("docs/runbook.md")).unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| {
            h.to_ascii_lowercase()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == ' ')
                .collect::<String>()
                .replace(' ', "-")
        })
        .collect();
    let code = metrics_in_code();
    assert!(
        code.contains("connect_delivery_latency_seconds"),
        "{code:?}"
    );
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = s(&rule["alert"]);
            let expr = s(&rule["expr"]);
            alerts += 1;
            let mut watched = 0;
            for piece in expr.split("connect_").skip(1) {
                let metric: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let metric = format!("connect_{metric}");
                let base = metric
                    .strip_suffix("_bucket")
                    .or_else(|| metric.strip_suffix("_count"))
                    .or_else(|| metric.strip_suffix("_sum"))
                    .unwrap_or(&metric);
                assert!(code.contains(base), "{name}: no code records {base}");
                watched += 1;
            }
            assert!(watched > 0, "{name} watches no metric of ours");
            assert!(
                matches!(s(&rule["labels"]["severity"]), "page" | "ticket"),
                "{name}: severity"
            );
            let runbook_link = s(&rule["annotations"]["runbook"]);
            let anchor = runbook_link
                .strip_prefix("docs/runbook.md#")
                .expect("a link into docs/runbook.md");
            assert!(
                anchors.contains(anchor),
                "{name}: no `### ` section for #{anchor} in docs/runbook.md"
            );
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
    // The template's CloudWatch alarms point into the runbook the same way.
    let t = template();
    let alarms = resources_of_type(&t, "AWS::CloudWatch::Alarm");
    assert!(alarms.len() >= 2, "{alarms:?}");
    for (name, alarm) in alarms {
        let description = s(at(alarm, &["Properties", "AlarmDescription"]));
        let anchor = description
            .split("docs/runbook.md#")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("{name}: no runbook link in {description:?}"));
        assert!(
            anchors.contains(anchor),
            "{name}: no `### ` section for #{anchor} in docs/runbook.md"
        );
    }
}

/// A parameter's default as a number.
fn parameter_default(t: &Value, name: &str) -> u64 {
    let d = at(t, &["Parameters", name, "Default"]);
    d.as_u64()
        .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("parameter {name} has no numeric default"))
}

#[test]
fn a_flood_of_api_calls_cannot_take_what_must_keep_running() {
    let t = template();
    // API Gateway answers 429 past the stage's rate and burst, before any function runs.
    let api = &resources_of_type(&t, "AWS::Serverless::HttpApi")["HttpApi"];
    let settings = at(api, &["Properties", "DefaultRouteSettings"]);
    for (setting, parameter) in [
        ("ThrottlingRateLimit", "ApiRateLimit"),
        ("ThrottlingBurstLimit", "ApiBurstLimit"),
    ] {
        assert_eq!(
            ref_target(at(settings, &[setting])),
            Some(parameter),
            "{setting}"
        );
        assert!(parameter_default(&t, parameter) > 0);
    }
    // The functions that must keep running have concurrency of their own; group admin (the
    // costly calls) is held to its reservation.
    let fns = functions(&t);
    for (binary, parameter) in [
        ("offline-delivery", "OfflineDeliveryConcurrency"),
        ("group-events", "GroupEventsConcurrency"),
        ("push", "PushConcurrency"),
        ("push-later", "PushConcurrency"),
        ("sequencer", "SequencerConcurrency"),
        ("groups", "GroupsConcurrency"),
    ] {
        let reserved = at(fns[binary], &["Properties", "ReservedConcurrentExecutions"]);
        assert_eq!(ref_target(reserved), Some(parameter), "{binary}");
        assert!(parameter_default(&t, parameter) > 0, "{parameter}");
    }
    // Offline delivery keeps one invocation per user_connected partition (the setup container
    // makes the topic).
    let setup = container_env(&t, "MessagingTaskDefinition", "setup");
    let partitions: u64 = s(&setup["USER_CONNECTED_PARTITIONS"])
        .parse()
        .unwrap_or(u64::MAX);
    assert!(parameter_default(&t, "OfflineDeliveryConcurrency") >= partitions);
}

#[test]
fn the_state_redis_never_evicts_and_the_logs_have_their_own_that_does() {
    let t = template();
    let groups = resources_of_type(&t, "AWS::ElastiCache::ReplicationGroup");
    let params = resources_of_type(&t, "AWS::ElastiCache::ParameterGroup");
    let policy_of = |cluster: &str| {
        let group = ref_target(at(
            groups[cluster],
            &["Properties", "CacheParameterGroupName"],
        ))
        .unwrap_or_else(|| panic!("{cluster}'s parameter group is one of ours"));
        s(at(
            params[group],
            &["Properties", "Properties", "maxmemory-policy"],
        ))
        .to_owned()
    };
    assert_eq!(policy_of("Redis"), "noeviction");
    assert_eq!(policy_of("RedisLogs"), "allkeys-lru");
    // Whoever reaches the state reaches the logs on their cluster (REDIS_LOG_URL).
    let mut envs: Vec<(String, BTreeMap<String, Value>)> = functions(&t)
        .into_iter()
        .map(|(name, f)| (name, env_of(f)))
        .collect();
    for (task, container) in containers(&t) {
        let name = s(at(container, &["Name"])).to_owned();
        let task = task.split('/').next().unwrap_or_default().to_owned();
        envs.push((name.clone(), container_env(&t, &task, &name)));
    }
    let mut with_redis = 0;
    for (name, env) in envs {
        let Some(state) = env.get("REDIS_URL") else {
            continue;
        };
        with_redis += 1;
        assert!(
            sub_string(state).is_some_and(|u| u.contains("${Redis.ConfigurationEndPoint")),
            "{name}: REDIS_URL is the state cluster"
        );
        let logs = env
            .get("REDIS_LOG_URL")
            .unwrap_or_else(|| panic!("{name}: REDIS_URL without REDIS_LOG_URL"));
        assert!(
            sub_string(logs)
                .is_some_and(|u| u.starts_with("rediss://${RedisLogs.ConfigurationEndPoint")),
            "{name}: REDIS_LOG_URL is the logs' cluster"
        );
    }
    assert!(
        with_redis >= 4,
        "gateway, messaging, offline delivery, push"
    );
    // An alarm watches the state cluster fill: every shard, whatever RedisShards allows.
    let alarm = &resources_of_type(&t, "AWS::CloudWatch::Alarm")["RedisMemoryAlarm"];
    let metrics = at(alarm, &["Properties", "Metrics"])
        .as_sequence()
        .expect("a metric math alarm");
    assert!(metrics.len() <= 10, "a metric math alarm takes 10 metrics");
    let returned: Vec<&Value> = metrics
        .iter()
        .filter(|m| at(m, &["ReturnData"]).as_bool() == Some(true))
        .collect();
    assert_eq!(returned.len(), 1);
    assert_eq!(
        s(at(returned[0], &["Expression"])),
        r#"MAX(METRICS("shard"))"#
    );
    assert!(!s(at(returned[0], &["Id"])).contains("shard"));
    let max = at(&t, &["Parameters", "RedisShards", "MaxValue"])
        .as_u64()
        .expect("RedisShards has a MaxValue");
    for shards in 1..=max {
        let mut watched = BTreeSet::new();
        for m in metrics {
            let m = match m {
                Value::Tagged(tagged) if tagged.tag == "If" => {
                    let branches = tagged.value.as_sequence().expect("!If [c, a, b]");
                    let condition = at(&t, &["Conditions", s(&branches[0])]);
                    if !holds(&t, condition, shards) {
                        assert_eq!(ref_target(&branches[2]), Some("AWS::NoValue"));
                        continue;
                    }
                    &branches[1]
                }
                m => m,
            };
            if at(m, &["ReturnData"]).as_bool() == Some(true) {
                continue;
            }
            assert!(s(at(m, &["Id"])).starts_with("shard"));
            let metric = at(m, &["MetricStat", "Metric"]);
            assert_eq!(
                s(at(metric, &["MetricName"])),
                "DatabaseMemoryUsagePercentage"
            );
            let node = pairs(at(metric, &["Dimensions"]), "Name", "Value")["CacheClusterId"];
            watched.insert(sub_string(node).unwrap_or_default().to_owned());
        }
        let every: BTreeSet<String> = (1..=shards)
            .map(|k| format!("${{Redis}}-{k:04}-001"))
            .collect();
        assert_eq!(watched, every, "with {shards} shards");
    }
}

/// Evaluates a condition of the template for `RedisShards` = `shards`.
fn holds(t: &Value, condition: &Value, shards: u64) -> bool {
    let Value::Tagged(tagged) = condition else {
        panic!("not a condition: {condition:?}");
    };
    let args = tagged.value.as_sequence();
    let all = || args.into_iter().flatten();
    let operand = |v: &Value| match ref_target(v) {
        Some("RedisShards") => shards.to_string(),
        Some(other) => panic!("a condition on {other}"),
        None => match v {
            Value::Number(n) => n.to_string(),
            v => s(v).to_owned(),
        },
    };
    match tagged.tag.to_string().trim_start_matches('!') {
        "Not" => !holds(t, &args.expect("!Not [c]")[0], shards),
        "Or" => all().any(|c| holds(t, c, shards)),
        "And" => all().all(|c| holds(t, c, shards)),
        "Equals" => {
            let pair = args.expect("!Equals [a, b]");
            operand(&pair[0]) == operand(&pair[1])
        }
        "Condition" => holds(t, at(t, &["Conditions", s(&tagged.value)]), shards),
        other => panic!("condition function {other}"),
    }
}

/// Whether one of `f`'s inline policy statements allows `action` on the `!Ref` of `resource`.
fn function_allows(f: &Value, action: &str, resource: &str) -> bool {
    at(f, &["Properties", "Policies"])
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|p| at(p, &["Statement"]).as_sequence().into_iter().flatten())
        .any(|st| {
            let actions = at(st, &["Action"]);
            let resources = at(st, &["Resource"]);
            let has_action = s_or_list(actions).contains(&action);
            let has_resource = match resources.as_sequence() {
                Some(list) => list.iter().any(|r| ref_target(r) == Some(resource)),
                None => ref_target(resources) == Some(resource),
            };
            has_action && has_resource
        })
}

fn s_or_list(v: &Value) -> Vec<&str> {
    match v.as_sequence() {
        Some(list) => list.iter().filter_map(|x| x.as_str()).collect(),
        None => v.as_str().into_iter().collect(),
    }
}

#[test]
fn every_redis_client_authenticates_with_the_clusters_auth_token() {
    let t = template();
    // Both clusters want the token (ElastiCache takes one only with in-transit encryption).
    for (name, group) in resources_of_type(&t, "AWS::ElastiCache::ReplicationGroup") {
        let props = at(group, &["Properties"]);
        assert_eq!(
            at(props, &["TransitEncryptionEnabled"]).as_bool(),
            Some(true),
            "{name}"
        );
        assert_eq!(
            sub_string(at(props, &["AuthToken"])),
            Some("{{resolve:secretsmanager:${RedisAuthToken}}}"),
            "{name}: the AUTH token from the secret"
        );
    }
    assert!(resources_of_type(&t, "AWS::SecretsManager::Secret").contains_key("RedisAuthToken"));
    // Every service that reaches Redis gets it injected; every function reads it by ARN.
    let mut clients = 0;
    for (task, container) in containers(&t) {
        let name = s(at(container, &["Name"])).to_owned();
        let task = task.split('/').next().unwrap_or_default().to_owned();
        let env = container_env(&t, &task, &name);
        if env.contains_key("REDIS_URL") {
            clients += 1;
            assert_eq!(
                env.get("REDIS_PASSWORD").and_then(ref_target),
                Some("RedisAuthToken"),
                "{name}: REDIS_PASSWORD from the secret"
            );
        }
    }
    let execution = &resources_of_type(&t, "AWS::IAM::Role")["TaskExecutionRole"];
    let injected = at(execution, &["Properties", "Policies"])
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            at(p, &["PolicyDocument", "Statement"])
                .as_sequence()
                .into_iter()
                .flatten()
        })
        .any(|st| {
            at(st, &["Resource"])
                .as_sequence()
                .is_some_and(|rs| rs.iter().any(|r| ref_target(r) == Some("RedisAuthToken")))
        });
    assert!(injected, "ECS may read the token to inject it");
    for (binary, f) in functions(&t) {
        let env = env_of(f);
        if !env.contains_key("REDIS_URL") {
            continue;
        }
        clients += 1;
        assert_eq!(
            env.get("REDIS_AUTH_SECRET_ARN").and_then(ref_target),
            Some("RedisAuthToken"),
            "{binary}: REDIS_AUTH_SECRET_ARN"
        );
        assert!(
            function_allows(f, "secretsmanager:GetSecretValue", "RedisAuthToken"),
            "{binary} may read the token"
        );
        assert!(
            !env.contains_key("REDIS_PASSWORD"),
            "{binary}: the token as a plain value"
        );
    }
    assert!(
        clients >= 7,
        "gateway, messaging and the five functions: {clients}"
    );
}

/// The settings the code reads: the first argument of each call to one of the config helpers
/// (`connect_config::Settings::{string, optional, parsed}`, and the gateway's and Kafka's own
/// `secs`, `num`, `millis`, `need`, `secret`), as `NAME`.
fn settings_read_by_the_code() -> BTreeMap<String, PathBuf> {
    const READERS: [&str; 9] = [
        "var", "string", "optional", "parsed", "secs", "num", "millis", "need", "secret",
    ];
    let mut names = BTreeMap::new();
    for (path, text) in sources(&["crates", "functions", "gateway", "messaging", "tools"]) {
        if !has_extension(&path, "rs") {
            continue;
        }
        for (at, _) in text.match_indices("(\"") {
            let mut before = &text[..at];
            // `var::<u64>("…"`: the turbofish goes.
            if before.ends_with('>') {
                if let Some(open) = before.rfind("::<") {
                    before = &before[..open];
                }
            }
            let ident: String = before
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if !READERS.contains(&ident.as_str()) {
                continue;
            }
            let name = text[at + 2..].split('"').next().unwrap_or_default();
            if name.len() > 2
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                names.entry(name.to_owned()).or_insert_with(|| path.clone());
            }
        }
    }
    names
}

#[test]
fn every_setting_the_code_reads_is_in_the_configuration_reference() {
    let reference = std::fs::read_to_string(root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let read = settings_read_by_the_code();
    assert!(
        read.len() > 100,
        "the scan finds the settings: {}",
        read.len()
    );
    let missing: Vec<_> = read
        .iter()
        .filter(|(name, _)| !reference.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "read by the code, not in docs/configuration.md: {missing:?}"
    );
    // And the other way: each setting a table lists is a name the code or the scripts use.
    let mut used = names_in_code();
    used.extend(read.into_keys());
    // The local stand-ins (tools/local-api, tools/event-poller) read theirs with clap's `env`.
    for (path, text) in sources(&["tools"]) {
        if has_extension(&path, "rs") {
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                used.insert(word.to_owned());
            }
        }
    }
    let scripts = std::fs::read_dir(root().join("scripts"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| has_extension(p, "sh"))
        .chain([root().join("Makefile")]);
    for path in scripts {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.len() > 2
                && word
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                used.insert(word.to_owned());
            }
        }
    }
    let mut stale = Vec::new();
    for line in reference.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or_default();
        for name in first.split('`').skip(1).step_by(2) {
            if name.len() > 2
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && !used.contains(name)
                // The gateway's rate limits: `<prefix>_RATE` and `<prefix>_BURST` from one prefix.
                && !["_RATE", "_BURST"].iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|prefix| used.contains(prefix))
                })
            {
                stale.push(name.to_owned());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "docs/configuration.md lists what nothing reads: {stale:?}"
    );
}

/// Issue 24: one SCRAM user per service. Each MSK user's secret (its name is the user's, and the
/// name connect-setup's ACLs give it by default), each service and trigger signing in with its
/// own, and the setup container making the ACLs as the administrator.
#[test]
fn every_service_signs_in_to_msk_as_its_own_user_and_setup_makes_the_acls() {
    let t = template();
    let users = [
        ("MskScramSecret", "admin"),
        ("MskGatewaySecret", "gateway"),
        ("MskMessagingSecret", "messaging"),
        ("MskOfflineSecret", "offline"),
        ("MskPushSecret", "push"),
        ("MskGroupEventsSecret", "group-events"),
        ("MskMirrorMakerSecret", "mirrormaker"),
    ];
    let listed: Vec<&str> = at(
        &t,
        &["Resources", "MskScramUsers", "Properties", "SecretArnList"],
    )
    .as_sequence()
    .expect("SecretArnList")
    .iter()
    .filter_map(ref_target)
    .collect();
    for (secret, user) in users {
        let template: serde_json::Value = serde_json::from_str(s(at(
            &t,
            &[
                "Resources",
                secret,
                "Properties",
                "GenerateSecretString",
                "SecretStringTemplate",
            ],
        )))
        .expect("a JSON secret template");
        assert_eq!(template["username"], user, "{secret}");
        let name =
            sub_string(at(&t, &["Resources", secret, "Properties", "Name"])).unwrap_or_default();
        assert!(
            name.starts_with("AmazonMSK_"),
            "{secret}: MSK takes only AmazonMSK_* secrets"
        );
        assert!(
            listed.contains(&secret),
            "{secret} is one of the cluster's SCRAM users"
        );
    }
    assert_eq!(listed.len(), users.len(), "no user without a service");

    // The functions: their own user in their code and in their triggers, and the group the
    // ACLs name (the local pollers' default, `lambda-<function>`).
    let fns = functions(&t);
    for (function, secret) in [
        ("group-events", "MskGroupEventsSecret"),
        ("offline-delivery", "MskOfflineSecret"),
        ("push", "MskPushSecret"),
        ("push-later", "MskPushSecret"),
    ] {
        let f = &fns[function];
        assert_eq!(
            ref_target(&env_of(f)["KAFKA_SASL_SECRET_ARN"]),
            Some(secret),
            "{function}"
        );
        for msk in events_of(f, "MSK") {
            let access = at(msk, &["SourceAccessConfigurations"])
                .as_sequence()
                .expect("access");
            assert!(
                access
                    .iter()
                    .all(|a| ref_target(at(a, &["URI"])) == Some(secret)),
                "{function}'s trigger signs in as {secret}"
            );
            assert_eq!(
                s(at(msk, &["ConsumerGroupId"])),
                format!("lambda-{function}"),
                "{function}'s trigger reads in the group its ACLs name"
            );
        }
    }
    // No function or task signs in as the administrator but the setup container.
    for (name, f) in &fns {
        assert_ne!(
            ref_target(
                env_of(f)
                    .get("KAFKA_SASL_SECRET_ARN")
                    .unwrap_or(&Value::Null)
            ),
            Some("MskScramSecret"),
            "{name}"
        );
    }
    let setup = container_env(&t, "MessagingTaskDefinition", "setup");
    assert_eq!(s(&setup["KAFKA_ACLS"]), "true");
    // The peer's MirrorMaker reads this cluster as its mirrormaker user, not its administrator.
    assert_eq!(
        ref_target(at(&t, &["Outputs", "MskScramSecretArn", "Value"])),
        Some("MskMirrorMakerSecret")
    );
}
