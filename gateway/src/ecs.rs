//! Where this gateway runs on ECS Fargate: the task's own private IPv4 address, from the task
//! metadata endpoint v4 (`ECS_CONTAINER_METADATA_URI_V4`, which ECS sets in every container).
//! The offline-delivery function reaches the gateway's management API at that address, so the
//! session registry must carry it (`GATEWAY_ENDPOINT` is derived from it when not set).

use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// The env var ECS sets to the container's metadata endpoint.
pub const METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

#[derive(Deserialize)]
struct Container {
    #[serde(rename = "Networks", default)]
    networks: Vec<Network>,
}

#[derive(Deserialize)]
struct Network {
    #[serde(rename = "IPv4Addresses", default)]
    ipv4: Vec<String>,
}

/// The container's first IPv4 address in a `${ECS_CONTAINER_METADATA_URI_V4}` response (the
/// task's ENI address in `awsvpc` mode, the only mode Fargate has).
pub fn address_in(container_metadata: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    let c: Container =
        serde_json::from_str(container_metadata).context("container metadata is not JSON")?;
    let ip = c
        .networks
        .iter()
        .flat_map(|n| &n.ipv4)
        .next()
        .ok_or_else(|| anyhow!("no IPv4 address in the container metadata"))?;
    ip.parse()
        .with_context(|| format!("bad IPv4 address {ip:?} in the container metadata"))
}

/// Asks the metadata endpoint `uri` for the container's address (a few tries: the endpoint
/// may answer a moment after the container starts).
pub async fn own_address(uri: &str) -> anyhow::Result<std::net::Ipv4Addr> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = uri
        .parse()
        .with_context(|| format!("{METADATA_ENV}={uri}"))?;
    let mut last = anyhow!("not asked");
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        let answer = async {
            let res = tokio::time::timeout(Duration::from_secs(2), client.get(uri.clone()))
                .await
                .context("the metadata endpoint did not answer in 2 s")??;
            anyhow::ensure!(
                res.status().is_success(),
                "metadata endpoint: {}",
                res.status()
            );
            let body = res.into_body().collect().await?.to_bytes();
            address_in(std::str::from_utf8(&body)?)
        };
        match answer.await {
            Ok(ip) => return Ok(ip),
            Err(e) => last = e,
        }
    }
    Err(last.context(format!("asking {uri} for the task's address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a Fargate container metadata response (task metadata endpoint v4).
    const SAMPLE: &str = r#"{
        "DockerId": "cd189a933e5849daa93386466019ab50-2495160603",
        "Name": "gateway",
        "DockerName": "gateway",
        "Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/connect-gateway:latest",
        "Labels": {"com.amazonaws.ecs.task-definition-family": "connect-gateway"},
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Limits": {"CPU": 2},
        "Type": "NORMAL",
        "LogDriver": "awslogs",
        "Networks": [{
            "NetworkMode": "awsvpc",
            "IPv4Addresses": ["10.0.2.106"],
            "AttachmentIndex": 0,
            "MACAddress": "0e:9e:32:c7:48:85",
            "IPv4SubnetCIDRBlock": "10.0.2.0/24",
            "PrivateDNSName": "ip-10-0-2-106.us-east-1.compute.internal",
            "SubnetGatewayIpv4Address": "10.0.2.1/24"
        }]
    }"#;

    #[test]
    fn the_task_address_comes_from_the_container_metadata() {
        assert_eq!(
            address_in(SAMPLE).unwrap(),
            "10.0.2.106".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert!(address_in(r#"{"Networks":[]}"#).is_err());
        assert!(address_in(r#"{"Networks":[{"IPv4Addresses":["nope"]}]}"#).is_err());
        assert!(address_in("<html>").is_err());
    }
}
