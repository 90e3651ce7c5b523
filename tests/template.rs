//! `template.yaml` against the code: every function, route, table, key, index and topic the code
//! uses is in the template, with the settings the code needs, and the template declares nothing
//! the code does not know (a function without a crate, a route without a handler, an
//! environment variable no code reads). No stack needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

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
    let types: BTreeMap<&str, &str> = at(table, &["Properties", "AttributeDefinitions"])
        .as_sequence()
        .expect("AttributeDefinitions")
        .iter()
        .map(|d| (s(at(d, &["AttributeName"])), s(at(d, &["AttributeType"]))))
        .collect();
    schema
        .as_sequence()
        .expect("KeySchema")
        .iter()
        .map(|k| {
            let name = s(at(k, &["AttributeName"]));
            (
                name.to_owned(),
                types.get(name).copied().unwrap_or("undeclared").to_owned(),
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
    let tables = resources_of_type(&t, "AWS::DynamoDB::Table");
    let globals = at(&t, &["Globals", "Function", "Environment", "Variables"]);
    let table = |var: &str| -> &Value {
        let name = ref_target(at(globals, &[var]))
            .unwrap_or_else(|| panic!("{var} is not a !Ref to a table"));
        tables
            .get(name)
            .unwrap_or_else(|| panic!("{var} → {name}: no such table"))
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
    let topics = connect_kafka::Topics::from_env();
    let events = &fns["group-events"];
    assert_eq!(
        s(&env_of(events)["KAFKA_INCOMING_TOPIC"]),
        topics.incoming,
        "group events go to incoming_messages"
    );
    assert!(env_of(events).contains_key("KAFKA_BROKERS"));
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
}

/// Every string literal in the code that looks like an environment variable name.
fn names_in_code() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for literal in text.split('"').skip(1).step_by(2) {
                    if literal.len() > 2
                        && literal
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                    {
                        out.insert(literal.to_owned());
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for dir in ["crates", "functions"] {
        walk(&root().join(dir), &mut names);
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
    for (binary, needs) in [
        ("history", &["CONNECT_JWT_SECRET"][..]),
        ("groups", &["CONNECT_JWT_SECRET"]),
        ("group-events", &["KAFKA_BROKERS", "KAFKA_INCOMING_TOPIC"]),
        ("offline-delivery", &["REDIS_URL", "CONNECT_INTERNAL_TOKEN"]),
    ] {
        let env = env_of(fns[binary]);
        for var in needs {
            assert!(env.contains_key(*var), "{binary} needs {var}");
        }
    }
}
