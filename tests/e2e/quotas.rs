//! One account cannot spam people into groups: the member cap holds under concurrent adds, a
//! user is in at most `GROUP_MAX_PER_USER` groups, group creations and additions have hourly
//! quotas (429), and `GET /v1/groups` pages. Each test runs its own HTTP API (small caps and
//! quotas) over the stack's DynamoDB.

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::private::ExtraApi;

async fn create_at(
    api: &ExtraApi,
    owner: &str,
    members: &[String],
) -> anyhow::Result<(u16, Value)> {
    api_call_at(
        &api.addr,
        "POST",
        "/v1/groups",
        Some(owner),
        &json!({"name": "Q", "members": members}).to_string(),
    )
    .await
}

async fn add_at(api: &ExtraApi, by: &str, group: &str, user: &str) -> anyhow::Result<(u16, Value)> {
    api_call_at(
        &api.addr,
        "POST",
        &format!("/v1/groups/{group}/members"),
        Some(by),
        &json!({ "user": user }).to_string(),
    )
    .await
}

/// Hourly windows are clock hours: a test that counts within one waits out the last seconds of
/// an hour rather than straddle two.
async fn within_one_hour() {
    let into = connect_core::now_ms() / 1000 % 3600;
    if into > 3590 {
        tokio::time::sleep(std::time::Duration::from_secs(3601 - into)).await;
    }
}

#[tokio::test]
async fn concurrent_adds_to_a_group_one_below_its_cap_let_exactly_one_in() -> anyhow::Result<()> {
    let api = ExtraApi::start_with(&[("GROUP_MAX_MEMBERS", "30")]).await?;
    let owner = user("capowner");
    let members: Vec<String> = (0..28).map(|i| user(&format!("cm{i}"))).collect();
    let (status, group) = create_at(&api, &owner, &members).await?;
    assert_eq!(status, 201, "{group}");
    let group = group["group"].as_str().unwrap_or_default().to_owned();
    assert_eq!(group_of(&api, &owner, &group).await?.len(), 29);
    let newcomers: Vec<String> = (0..25).map(|i| user(&format!("new{i}"))).collect();
    let answers = join_all(newcomers.iter().map(|n| add_at(&api, &owner, &group, n))).await;
    let mut statuses: Vec<u16> = Vec::new();
    for a in answers {
        let (status, body) = a?;
        if status != 200 {
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (413, Some("too_large")),
                "{body}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(group_of(&api, &owner, &group).await?.len(), 30);
    Ok(())
}

async fn group_of(api: &ExtraApi, caller: &str, group: &str) -> anyhow::Result<Vec<Value>> {
    let (status, g) = api_call_at(
        &api.addr,
        "GET",
        &format!("/v1/groups/{group}"),
        Some(caller),
        "",
    )
    .await?;
    anyhow::ensure!(status == 200, "{status} {g}");
    Ok(g["members"].as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn a_user_in_the_most_groups_is_added_to_no_more() -> anyhow::Result<()> {
    let api = ExtraApi::start_with(&[("GROUP_MAX_PER_USER", "3")]).await?;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    for _ in 0..3 {
        assert_eq!(
            create_at(&api, &alice, std::slice::from_ref(&bob)).await?.0,
            201
        );
    }
    // alice cannot create a fourth; carol's group leaves bob out and says so by its members.
    let (status, body) = create_at(&api, &alice, &[]).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, g) = create_at(&api, &carol, std::slice::from_ref(&bob)).await?;
    assert_eq!(status, 201);
    assert_eq!(g["members"], json!([carol]));
    let id = g["group"].as_str().unwrap_or_default().to_owned();
    let (status, body) = add_at(&api, &carol, &id, &bob).await?;
    assert_eq!(status, 403, "{body}");
    // bob leaves one: there is room again.
    let (_, list) = api_call_at(&api.addr, "GET", "/v1/groups", Some(&bob), "").await?;
    let first = list["groups"][0]["group"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (status, _) = api_call_at(
        &api.addr,
        "DELETE",
        &format!("/v1/groups/{first}/members/{bob}"),
        Some(&bob),
        "",
    )
    .await?;
    assert_eq!(status, 204);
    assert_eq!(add_at(&api, &carol, &id, &bob).await?.0, 200);
    // A count that says zero while memberships remain (they were written before counts
    // existed): leaving still works, and the count stays at zero.
    dynamo_put_count(
        connect_dynamo::Tables::from_settings(&settings()).groups,
        bob.clone(),
        0,
    )
    .await?;
    let (status, _) = api_call_at(
        &api.addr,
        "DELETE",
        &format!("/v1/groups/{id}/members/{bob}"),
        Some(&bob),
        "",
    )
    .await?;
    assert_eq!(status, 204, "leaving with a count of zero");
    Ok(())
}

/// Sets `user`'s group count item (`u#<user>`, `groups`) to `n`.
async fn dynamo_put_count(table: String, user: String, n: u64) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    dynamo()
        .await
        .put_item()
        .table_name(table)
        .item("group", AttributeValue::S(format!("u#{user}")))
        .item("item", AttributeValue::S("groups".into()))
        .item("n", AttributeValue::N(n.to_string()))
        .send()
        .await?;
    Ok(())
}

#[tokio::test]
async fn group_creations_and_additions_past_the_hourly_quota_get_429() -> anyhow::Result<()> {
    let api = ExtraApi::start_with(&[
        ("GROUP_CREATES_PER_HOUR", "3"),
        ("GROUP_MEMBER_ADDS_PER_HOUR", "5"),
    ])
    .await?;
    within_one_hour().await;
    let alice = user("alice");
    let mut groups = Vec::new();
    for i in 0..3 {
        let (status, g) = create_at(&api, &alice, &[user(&format!("m{i}"))]).await?;
        assert_eq!(status, 201, "{g}");
        groups.push(g["group"].as_str().unwrap_or_default().to_owned());
    }
    let (status, body) = create_at(&api, &alice, &[]).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // 3 of 5 additions went into the creations: 2 more, then 429.
    for i in 0..2 {
        assert_eq!(
            add_at(&api, &alice, &groups[0], &user(&format!("a{i}")))
                .await?
                .0,
            200
        );
    }
    let (status, body) = add_at(&api, &alice, &groups[0], &user("late")).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // The quota is alice's: another member still adds.
    let bob = user("bob");
    assert_eq!(add_at(&api, &alice, &groups[1], &bob).await?.0, 429);
    let member = groups_member(&api, &alice, &groups[1]).await?;
    assert_eq!(add_at(&api, &member, &groups[1], &bob).await?.0, 200);
    Ok(())
}

/// A member of `group` other than `owner`.
async fn groups_member(api: &ExtraApi, owner: &str, group: &str) -> anyhow::Result<String> {
    group_of(api, owner, group)
        .await?
        .iter()
        .filter_map(Value::as_str)
        .find(|m| *m != owner)
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{group} has nobody but {owner}"))
}

#[tokio::test]
async fn the_group_list_pages_through_250_groups() -> anyhow::Result<()> {
    let api = ExtraApi::start_with(&[("GROUP_CREATES_PER_HOUR", "300")]).await?;
    let alice = user("alice");
    let created = futures_util::stream::iter(0..250)
        .map(|_| create_at(&api, &alice, &[]))
        .buffer_unordered(8);
    use futures_util::StreamExt;
    let created: Vec<_> = created.collect().await;
    let mut ids: Vec<String> = Vec::new();
    for c in created {
        let (status, g) = c?;
        assert_eq!(status, 201, "{g}");
        ids.push(g["group"].as_str().unwrap_or_default().to_owned());
    }
    ids.sort();
    let mut seen: Vec<String> = Vec::new();
    let mut pages = Vec::new();
    let mut path = "/v1/groups?limit=100".to_owned();
    loop {
        let (status, page) = api_call_at(&api.addr, "GET", &path, Some(&alice), "").await?;
        assert_eq!(status, 200, "{page}");
        let groups = page["groups"].as_array().cloned().unwrap_or_default();
        pages.push(groups.len());
        seen.extend(
            groups
                .iter()
                .filter_map(|g| g["group"].as_str().map(str::to_owned)),
        );
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/groups?limit=100&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(pages, [100, 100, 50]);
    assert_eq!(seen, ids);
    // Without `limit`: every group, as PROTOCOL.md has it.
    let (_, all) = api_call_at(&api.addr, "GET", "/v1/groups", Some(&alice), "").await?;
    assert_eq!(all["groups"].as_array().map(Vec::len), Some(250));
    let (status, _) =
        api_call_at(&api.addr, "GET", "/v1/groups?limit=101", Some(&alice), "").await?;
    assert_eq!(status, 400);
    Ok(())
}

/// One user sending 16 KiB bodies to fresh user ids as fast as the gateway takes them: past
/// `GATEWAY_NEW_CONVERSATIONS_PER_HOUR` each such send is `rate_limited`, and Redis holds no more
/// logs, inbox entries or started conversations of theirs than the quota allows.
#[tokio::test]
async fn sends_to_fresh_user_ids_past_the_new_conversation_quota_are_refused() -> anyhow::Result<()>
{
    use redis::AsyncCommands;
    let quota = 20;
    let gw = crate::private::ExtraGateway::start_with(&[
        ("GATEWAY_NEW_CONVERSATIONS_PER_HOUR", "20"),
        ("GATEWAY_SEND_RATE", "1000"),
        ("GATEWAY_SEND_BURST", "1000"),
        ("GATEWAY_USER_SEND_RATE", "1000"),
        ("GATEWAY_USER_SEND_BURST", "1000"),
    ])
    .await?;
    within_one_hour().await;
    let spammer = user("spammer");
    let mut c = Client::connect(&gw.addr, &spammer).await?;
    let body = "x".repeat(16 * 1024);
    let n = 60;
    let peers: Vec<String> = (0..n).map(|_| user("fresh")).collect();
    for (i, peer) in peers.iter().enumerate() {
        c.send_to(&format!("s{i}"), peer, &body).await?;
    }
    let (mut accepted, mut refused) = (0, 0);
    while accepted + refused < n {
        let f = c.next().await?;
        match (f["type"].as_str(), f["code"].as_str()) {
            (Some("accepted"), _) => accepted += 1,
            (Some("error"), Some("rate_limited")) => refused += 1,
            // A busy stack: the client retries with the same id, as the contract says.
            (Some("error"), Some("unavailable")) => {
                let id = f["id"].as_str().unwrap_or_default();
                let i: usize = id.trim_start_matches('s').parse()?;
                c.send_to(id, &peers[i], &body).await?;
            }
            (Some("error"), _) => anyhow::bail!("a send refused otherwise: {f}"),
            // Not an answer (nothing else is sent to a fresh user, but a client passes over
            // what it does not know).
            _ => {}
        }
    }
    assert_eq!((accepted, refused), (quota, n - quota));
    // What Redis holds of theirs: as many conversations as the quota (single-key reads, so
    // this runs on the AWS-like stack's cluster too).
    let redis_cfg = connect_redis::RedisConfig::from_settings(&settings())?;
    let mut state = connect_redis::connect(&redis_cfg).await?;
    let mut logs = connect_redis::connect_logs(&state, &redis_cfg).await?;
    let inbox: u64 = state.zcard(format!("inbox:{{{spammer}}}")).await?;
    let window = connect_core::now_ms() / 1000 / 3600;
    let counted: u64 = state
        .scard(format!("started:{{{spammer}}}:{window}"))
        .await?;
    let mut their_logs = 0;
    for peer in &peers {
        let key = format!("log:{{{}}}", dm(&spammer, peer));
        if logs.exists::<_, bool>(key).await? {
            their_logs += 1;
        }
    }
    assert_eq!(
        (inbox, counted, their_logs),
        (quota as u64, quota as u64, quota)
    );
    Ok(())
}

/// Memberships whose group is gone (a create that died before its meta item) are left out of
/// a page but move the cursor: a page of nothing but them still leads on to the groups after.
#[tokio::test]
async fn a_page_of_memberships_whose_groups_are_gone_leads_on() -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let api = ExtraApi::start_with(&[]).await?;
    let alice = user("alice");
    let table = connect_dynamo::Tables::from_settings(&settings()).groups;
    // '.' sorts before the digits and letters of minted ids: these come first.
    for i in 0..3 {
        dynamo()
            .await
            .put_item()
            .table_name(&table)
            .item("group", AttributeValue::S(format!("g_.gone{i}")))
            .item("item", AttributeValue::S(format!("m#{alice}")))
            .item("user", AttributeValue::S(alice.clone()))
            .item("since", AttributeValue::N("1".into()))
            .send()
            .await?;
    }
    let mut real = Vec::new();
    for _ in 0..2 {
        let (status, g) = create_at(&api, &alice, &[]).await?;
        assert_eq!(status, 201, "{g}");
        real.push(g["group"].as_str().unwrap_or_default().to_owned());
    }
    real.sort();
    let (status, first) =
        api_call_at(&api.addr, "GET", "/v1/groups?limit=3", Some(&alice), "").await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["groups"].as_array().map(Vec::len), Some(0), "{first}");
    let next = first["next"].as_str().expect("a cursor past the gone ones");
    let (_, second) = api_call_at(
        &api.addr,
        "GET",
        &format!("/v1/groups?limit=3&cursor={next}"),
        Some(&alice),
        "",
    )
    .await?;
    let ids: Vec<&str> = second["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["group"].as_str())
        .collect();
    assert_eq!(ids, real);
    assert!(second["next"].is_null(), "{second}");
    Ok(())
}
