//! What the tools need of a client, as a user with a token minted for them: the CLI's own
//! connections (`connect_cli::client`).

use connect_core::auth::TokenIssuer;

pub use connect_cli::client::Ws;

/// Opens `/ws` on `gateway` as `user` (a token valid for an hour).
pub async fn open(issuer: &TokenIssuer, gateway: &str, user: &str) -> anyhow::Result<Ws> {
    connect_cli::client::open(gateway, &issuer.mint(user, 3600), None).await
}

/// One call on the HTTP API as `user`: (status, JSON body or Null).
pub async fn api_request(
    issuer: &TokenIssuer,
    user: &str,
    method: &str,
    url: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    connect_cli::client::api(&issuer.mint(user, 3600), method, url, body).await
}

/// Where a benchmark finds the running stack (`--gateways`, `--api`, `--pids`).
#[derive(clap::Args, Debug, Clone)]
pub struct Stack {
    #[arg(long, default_value = "127.0.0.1:8080,127.0.0.1:8081")]
    pub gateways: String,
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub api: String,
    /// Where the stack keeps its pid files (for CPU and RSS).
    #[arg(long, default_value = ".local/pids")]
    pub pids: std::path::PathBuf,
}

impl Stack {
    /// The gateways' addresses.
    pub fn gateways(&self) -> Vec<String> {
        self.gateways.split(',').map(str::to_owned).collect()
    }
}
