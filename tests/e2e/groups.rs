//! Group administration on the HTTP API (the `groups` Lambda's handler) over the real group
//! table in DynamoDB Local.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn group_admin_follows_the_contract() -> anyhow::Result<()> {
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let (status, g) = api_call(
        "POST",
        "/v1/groups",
        Some(&alice),
        &json!({"name": "Trip", "members": [bob, carol]}).to_string(),
    )
    .await?;
    assert_eq!(status, 201, "{g}");
    let id = g["group"].as_str().unwrap().to_owned();
    assert!(id.starts_with("g_"));
    assert_eq!(g["owner"], alice.as_str());
    let mut want = vec![alice.clone(), bob.clone(), carol.clone()];
    want.sort();
    assert_eq!(g["members"], json!(want));

    let group = format!("/v1/groups/{id}");
    let (status, got) = api_get(&group, Some(&bob)).await?;
    assert_eq!((status, &got), (200, &g));
    let (status, e) = api_get(&group, Some(&dave)).await?;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = api_get("/v1/groups/g_nosuchgroup", Some(&bob)).await?;
    assert_eq!(status, 404);
    let (status, _) = api_get(&group, None).await?;
    assert_eq!(status, 401);

    // Any member adds; the owner removes anyone; a member only themselves.
    let (status, after) = api_call(
        "POST",
        &format!("{group}/members"),
        Some(&bob),
        &json!({"user": dave}).to_string(),
    )
    .await?;
    assert_eq!(status, 200, "{after}");
    assert!(after["members"].as_array().unwrap().contains(&json!(dave)));
    let (status, mine) = api_get("/v1/groups", Some(&dave)).await?;
    assert_eq!(status, 200);
    assert_eq!(
        mine["groups"],
        json!([{"group": id, "name": "Trip", "owner": alice}])
    );

    let (status, _) = api_call(
        "DELETE",
        &format!("{group}/members/{alice}"),
        Some(&bob),
        "",
    )
    .await?;
    assert_eq!(status, 403, "a member removing the owner");
    let (status, _) = api_call(
        "DELETE",
        &format!("{group}/members/{carol}"),
        Some(&alice),
        "",
    )
    .await?;
    assert_eq!(status, 204);
    let (status, _) = api_get(&group, Some(&carol)).await?;
    assert_eq!(status, 403, "carol is out");
    let (status, _) = api_get(
        &format!("/v1/conversations/group:{id}/messages"),
        Some(&carol),
    )
    .await?;
    assert_eq!(status, 403, "carol's history read");
    let (status, page) = api_get(
        &format!("/v1/conversations/group:{id}/messages"),
        Some(&dave),
    )
    .await?;
    assert_eq!(status, 200, "{page}");
    let (status, _) = api_call(
        "DELETE",
        &format!("{group}/members/{dave}"),
        Some(&dave),
        "",
    )
    .await?;
    assert_eq!(status, 204, "a member leaves");

    let (status, e) = api_call("POST", "/v1/groups", Some(&alice), r#"{"name":""}"#).await?;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    Ok(())
}
