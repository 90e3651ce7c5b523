//! The connection count for autoscaling on AWS: every interval one line of CloudWatch's
//! embedded metric format on stdout, which CloudWatch Logs (the tasks' `awslogs` driver) turns
//! into the metric `ConnectChat/Connections` with dimension `Service` = `GATEWAY_EMF_SERVICE`,
//! the metric the template's scaling policy tracks (average per task). Off unless
//! `GATEWAY_EMF_SERVICE` is set.

use std::sync::Arc;
use std::time::Duration;

use crate::state::Gateway;

pub const NAMESPACE: &str = "ConnectChat";

/// One EMF log line.
pub fn line(service: &str, connections: usize, now_ms: u64) -> String {
    serde_json::json!({
        "_aws": {
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Service"]],
                "Metrics": [{"Name": "Connections", "Unit": "Count"}],
            }],
        },
        "Service": service,
        "Connections": connections,
    })
    .to_string()
}

/// Prints the line every `every` until the gateway stops.
pub async fn run(gw: Arc<Gateway>, service: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = gw.stopped() => return,
        }
        println!("{}", line(&service, gw.hub.len(), connect_core::now_ms()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_an_emf_document_for_one_metric() {
        let v: serde_json::Value = serde_json::from_str(&line("gateway-prod", 42, 1_700)).unwrap();
        assert_eq!(v["Connections"], 42);
        assert_eq!(v["Service"], "gateway-prod");
        assert_eq!(v["_aws"]["Timestamp"], 1_700);
        let directive = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        assert_eq!(directive["Dimensions"][0][0], "Service");
        assert_eq!(directive["Metrics"][0]["Name"], "Connections");
    }
}
