//! The HTTP API's handlers over `lambda_http` types. The same [`HttpApi::handle`] runs inside
//! each Lambda (`functions/history`, …) and behind the local HTTP API (`connect-local-api`), which
//! turns each request into the API Gateway HTTP API v2 event AWS would send ([`event_json`]).
//! Logic lives in `connect_core::history`; this crate maps HTTP to it and back.

use std::sync::Arc;

use lambda_http::{Body, Request, RequestExt, Response};

use connect_core::auth::TokenVerifier;
use connect_core::groups::{self, Caps, GroupRules, GroupStore, Groups};
use connect_core::history::{self, PageBody};
use connect_core::inbox;
use connect_core::ports::{
    ChatStore, HistoryStore, InboxIndex, PushDevices, PushRegistry, ReadMarkers,
};
use connect_core::push::{EndpointCheck, EndpointRule, PlatformEndpoints};
use connect_core::quota::QuotaStore;
use connect_core::ApiError;
use connect_protocol::{ErrorCode, UserId};

/// One route of the HTTP API and the function that serves it in AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub function: &'static str,
}

impl Route {
    /// API Gateway's `routeKey`.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

pub const HISTORY: Route = Route {
    method: "GET",
    path: "/v1/conversations/{conversation}/messages",
    function: "history",
};

const fn groups(method: &'static str, path: &'static str) -> Route {
    Route {
        method,
        path,
        function: "groups",
    }
}

pub const INBOX: Route = Route {
    method: "GET",
    path: "/v1/conversations",
    function: "inbox",
};

pub const RECEIPTS: Route = Route {
    method: "GET",
    path: "/v1/conversations/{conversation}/receipts",
    function: "inbox",
};

const fn devices(method: &'static str, path: &'static str) -> Route {
    Route {
        method,
        path,
        function: "devices",
    }
}

pub const VAPID: Route = devices("GET", "/v1/push/vapid");
pub const REGISTER_PUSH: Route = devices("PUT", "/v1/devices/{device}/push");
pub const UNREGISTER_PUSH: Route = devices("DELETE", "/v1/devices/{device}/push");

pub const PRESENCE: Route = Route {
    method: "GET",
    path: "/v1/users/{user}/presence",
    function: "presence",
};

pub const CREATE_GROUP: Route = groups("POST", "/v1/groups");
pub const LIST_GROUPS: Route = groups("GET", "/v1/groups");
pub const GET_GROUP: Route = groups("GET", "/v1/groups/{group}");
pub const ADD_MEMBER: Route = groups("POST", "/v1/groups/{group}/members");
pub const REMOVE_MEMBER: Route = groups("DELETE", "/v1/groups/{group}/members/{user}");

/// Every route, as `template.yaml` declares them.
pub const ROUTES: &[Route] = &[
    HISTORY,
    INBOX,
    RECEIPTS,
    CREATE_GROUP,
    LIST_GROUPS,
    GET_GROUP,
    ADD_MEMBER,
    REMOVE_MEMBER,
    VAPID,
    REGISTER_PUSH,
    UNREGISTER_PUSH,
    PRESENCE,
];

/// The route that serves `method path`, with its path parameters (still percent-encoded, as
/// API Gateway passes them).
pub fn match_route(method: &str, path: &str) -> Option<(Route, Vec<(String, String)>)> {
    ROUTES.iter().find_map(|route| {
        if !route.method.eq_ignore_ascii_case(method) {
            return None;
        }
        let want: Vec<&str> = route.path.split('/').collect();
        let got: Vec<&str> = path.split('/').collect();
        if want.len() != got.len() {
            return None;
        }
        let mut params = Vec::new();
        for (w, g) in want.iter().zip(&got) {
            match w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                Some(name) if !g.is_empty() => params.push((name.to_owned(), (*g).to_owned())),
                Some(_) => return None,
                None if w == g => {}
                None => return None,
            }
        }
        Some((*route, params))
    })
}

/// The route a request is for. API Gateway names it (`routeKey`), whatever the stage: with a
/// named stage (`prod`) the request's path starts with `/prod`, which is not part of the route.
/// Without a known route key, the path is matched with the stage prefix taken off.
pub fn route_of(req: &Request) -> Option<Route> {
    let (key, stage) = match req.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(ctx)) => {
            (ctx.route_key.as_deref(), ctx.stage.as_deref())
        }
        _ => (None, None),
    };
    if let Some(route) = key.and_then(|k| ROUTES.iter().find(|r| r.key() == k)) {
        return Some(*route);
    }
    let path = req.uri().path();
    let path = stage
        .filter(|s| *s != "$default")
        .and_then(|s| path.strip_prefix('/')?.strip_prefix(s))
        .filter(|rest| rest.starts_with('/'))
        .unwrap_or(path);
    match_route(req.method().as_str(), path).map(|(r, _)| r)
}

/// The API Gateway HTTP API (payload 2.0) event for a request, as JSON text.
pub fn event_json(
    route: &Route,
    params: &[(String, String)],
    path: &str,
    query: &str,
    headers: &[(String, String)],
    body: &str,
    source_ip: &str,
) -> String {
    let query_params: serde_json::Map<String, serde_json::Value> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), serde_json::Value::String(v.to_owned()))
        })
        .collect();
    // `host` and `x-forwarded-proto` are API Gateway's own, never the client's (lambda_http
    // builds the request's URI from them and panics on one that does not parse).
    let mut header_map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), serde_json::Value::String(v.clone())))
        .collect();
    header_map.insert("host".into(), "127.0.0.1".into());
    header_map.insert("x-forwarded-proto".into(), "http".into());
    let path_params: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let now = connect_core::now_ms();
    serde_json::json!({
        "version": "2.0",
        "routeKey": route.key(),
        "rawPath": path,
        "rawQueryString": query,
        "headers": header_map,
        "queryStringParameters": if query_params.is_empty() { serde_json::Value::Null } else { query_params.into() },
        "pathParameters": path_params,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": "127.0.0.1",
            "domainPrefix": "local",
            "http": {
                "method": route.method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": header_map_get(headers, "user-agent"),
            },
            "requestId": format!("local-{now}"),
            "routeKey": route.key(),
            "stage": "$default",
            "time": "",
            "timeEpoch": now,
        },
        "body": if body.is_empty() { serde_json::Value::Null } else { body.into() },
        "isBase64Encoded": false,
    })
    .to_string()
}

fn header_map_get(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// `%XX` escapes decoded (path parameters such as `dm%3Aalice%3Abob`).
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body))
        .unwrap_or_default()
}

/// 200 with `body` as JSON.
fn ok_json<T: serde::Serialize>(body: &T) -> Result<Response<Body>, ApiError> {
    let text = serde_json::to_string(body)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(json(200, text))
}

fn error(e: &ApiError) -> Response<Body> {
    json(e.status(), e.body())
}

/// What the HTTP API reads and writes.
#[derive(Clone)]
pub struct ApiPorts {
    pub history: Arc<dyn HistoryStore>,
    pub chat: Arc<dyn ChatStore>,
    pub groups: Arc<dyn GroupStore>,
    pub inbox: Arc<dyn InboxIndex>,
    pub markers: Arc<dyn ReadMarkers>,
    /// Group admin's hourly quotas.
    pub quotas: Arc<dyn QuotaStore>,
}

impl ApiPorts {
    /// Every port from one value that implements them all (the in-memory ports).
    pub fn all<T>(ports: Arc<T>) -> Self
    where
        T: HistoryStore + ChatStore + GroupStore + InboxIndex + ReadMarkers + QuotaStore + 'static,
    {
        Self {
            history: ports.clone(),
            chat: ports.clone(),
            groups: ports.clone(),
            inbox: ports.clone(),
            markers: ports.clone(),
            quotas: ports,
        }
    }
}

/// Push registration (`GET /v1/push/vapid`, `PUT`/`DELETE /v1/devices/{device}/push`).
#[derive(Clone)]
pub struct PushSettings {
    pub registry: Arc<dyn PushRegistry>,
    /// The registrations' mirror messaging reads with every batch (Redis).
    pub mirror: Arc<dyn PushDevices>,
    /// The VAPID public key browsers subscribe with (base64url, an uncompressed P-256 point).
    pub vapid_public_key: String,
    /// Where endpoints may point (the local stack: its own push service too).
    pub rule: EndpointRule,
    /// The endpoint's addresses.
    pub endpoints: Arc<dyn EndpointCheck>,
    /// APNs and FCM: the SNS platform endpoint each token gets at registration.
    pub platforms: Arc<dyn PlatformEndpoints>,
}

/// `GET /v1/users/{user}/presence`: the views (Redis) and the group rosters of the watch check.
#[derive(Clone)]
pub struct PresenceRead {
    pub store: Arc<dyn connect_core::presence::PresenceStore>,
    pub rosters: Arc<groups::MembershipCache>,
}

/// The HTTP API over its ports.
#[derive(Clone)]
pub struct HttpApi {
    verifier: TokenVerifier,
    ports: ApiPorts,
    group_rules: GroupRules,
    /// None: the push routes answer 404 (a function that does not serve them).
    push: Option<PushSettings>,
    /// None: the presence route answers 404.
    presence: Option<PresenceRead>,
}

/// What a Lambda serves beside the routes every HTTP function can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    /// History, the inbox and groups (DynamoDB only).
    Api,
    /// The push routes too (`devices`).
    Push,
    /// The presence route too (`presence`).
    Presence,
}

/// How the push routes are configured: the binary reads it (after the secrets are loaded) and
/// hands it down.
#[derive(Debug, Clone, Default)]
pub struct PushConfig {
    /// `CONNECT_VAPID_PRIVATE_KEY` (base64url P-256 scalar; on AWS from Secrets Manager). None:
    /// the development key, on the local stack only.
    pub vapid_private_key: Option<String>,
    /// `CONNECT_VAPID_CONTACT`: the `mailto:` or `https:` URL push services may write to.
    pub vapid_contact: String,
    /// `CONNECT_ENV=local`: the development key is taken, and endpoints on the local push
    /// service (`http://localhost`, `http://127.0.0.1`) too.
    pub local: bool,
    /// APNs and FCM through SNS (`SNS_*`): none enabled, such registrations get 400.
    #[cfg(feature = "aws")]
    pub sns: connect_push::sns::SnsConfig,
}

/// Why the HTTP API could not be set up (each final: a cold start fails with it).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] connect_config::ConfigError),
    #[error(transparent)]
    Auth(#[from] connect_core::auth::AuthError),
    #[error("connecting to Redis: {0}")]
    Redis(String),
}

/// An endpoint's addresses checked by resolving its host ([`connect_push::endpoint::check`]).
#[cfg(feature = "aws")]
struct Resolving;

#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl EndpointCheck for Resolving {
    async fn check(
        &self,
        endpoint: &str,
        rule: EndpointRule,
    ) -> Result<(), connect_core::push::EndpointRefused> {
        connect_push::endpoint::check(endpoint, rule)
            .await
            .map(|_| ())
            .map_err(|e| connect_core::push::EndpointRefused(e.to_string()))
    }
}

#[cfg(feature = "aws")]
impl PushSettings {
    /// The VAPID key from `config` (production refuses to start without one, or with the
    /// development key), registrations in `registry`, endpoints checked by resolving them.
    pub fn new(
        config: &PushConfig,
        registry: Arc<dyn PushRegistry>,
        mirror: Arc<dyn PushDevices>,
    ) -> Result<Self, connect_config::ConfigError> {
        use connect_push::vapid::Vapid;
        let vapid = Vapid::configured(
            config.vapid_private_key.as_deref(),
            &config.vapid_contact,
            config.local,
        )
        .map_err(|e| connect_config::ConfigError::new("CONNECT_VAPID_PRIVATE_KEY", e))?;
        Ok(Self {
            registry,
            mirror,
            vapid_public_key: vapid.public_key().to_owned(),
            rule: EndpointRule {
                allow_local: config.local,
            },
            endpoints: Arc::new(Resolving),
            platforms: Arc::new(connect_core::push::NoPlatforms),
        })
    }

    /// APNs and FCM registrations get their platform endpoints from `platforms`.
    pub fn with_platforms(mut self, platforms: Arc<dyn PlatformEndpoints>) -> Self {
        self.platforms = platforms;
        self
    }
}

/// The HTTP functions' sample events (`events/<function>.json`) answered by their handler, for
/// each function's own test.
#[cfg(feature = "samples")]
pub mod samples {
    use super::{HttpApi, Serves};

    /// `events/<function>.json` answered as the function serving `serves` answers it, on the
    /// backends its settings name (the local stack's under `make test`). A sample carries a
    /// token (alice's) that never expires, which no maximum token lifetime takes: it is replaced
    /// by one for alice minted now (as `stack.sh invoke` does). Panics where a test should fail.
    pub async fn answer(serves: Serves, function: &str) -> (u16, serde_json::Value) {
        let path = format!(
            "{}/../../events/{function}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let event = std::fs::read_to_string(&path).expect("the function's sample event");
        let settings = connect_config::Settings::from_process();
        let (secret, _) =
            connect_core::auth::JwtSecret::from_settings(&settings).expect("JWT secret");
        let issuer = connect_core::auth::TokenIssuer::new(&secret);
        let mut event: serde_json::Value = serde_json::from_str(&event).expect("JSON");
        if event["headers"]["authorization"].is_string() {
            event["headers"]["authorization"] =
                format!("Bearer {}", issuer.mint("alice", 600)).into();
        }
        let request =
            lambda_http::request::from_str(&event.to_string()).expect("an API Gateway event");
        let api = HttpApi::serving(serves, &settings)
            .await
            .expect("the function's API");
        let response = api.handle(request).await;
        let status = response.status().as_u16();
        let body = serde_json::from_slice(response.body()).unwrap_or(serde_json::Value::Null);
        (status, body)
    }
}

#[cfg(feature = "aws")]
/// Serves `HttpApi::from_settings` as a Lambda (API Gateway HTTP API v2 events): the whole `main` of
/// every HTTP function (`push`: this function serves the push routes).
pub async fn run_lambda(
    serves: Serves,
    settings: connect_config::Settings,
) -> Result<(), lambda_http::Error> {
    // The JWT secret (and VAPID key) from Secrets Manager when the deployment names their ARNs.
    let s = connect_secrets::load(settings).await?;
    let api = HttpApi::serving(serves, &s).await?;
    let api = &api;
    lambda_http::run(lambda_http::service_fn(move |req: Request| async move {
        Ok::<_, std::convert::Infallible>(api.handle(req).await)
    }))
    .await
}

/// Group admin's bounds: `GROUP_MAX_MEMBERS` (10000), `GROUP_MAX_PER_USER` (1000),
/// `GROUP_CREATES_PER_HOUR` (50) and `GROUP_MEMBER_ADDS_PER_HOUR` (10000: one full group an hour;
/// a group's initial members count).
pub fn group_rules(
    s: &connect_config::Settings,
) -> Result<GroupRules, connect_config::ConfigError> {
    let rules = GroupRules::new(
        Caps {
            members: s.parsed("GROUP_MAX_MEMBERS", 10_000)?,
            groups_per_user: s.parsed("GROUP_MAX_PER_USER", 1_000)?,
        },
        s.parsed("GROUP_CREATES_PER_HOUR", 50)?,
        s.parsed("GROUP_MEMBER_ADDS_PER_HOUR", 10_000)?,
    );
    for (name, v) in [
        ("GROUP_MAX_MEMBERS", rules.caps.members as u64),
        ("GROUP_MAX_PER_USER", rules.caps.groups_per_user as u64),
        ("GROUP_CREATES_PER_HOUR", rules.creates.limit),
    ] {
        if v == 0 {
            return Err(connect_config::ConfigError::new(name, "must be at least 1"));
        }
    }
    Ok(rules)
}

#[cfg(feature = "aws")]
/// The push routes' settings from env: `CONNECT_VAPID_PRIVATE_KEY`, `CONNECT_VAPID_CONTACT`,
/// `CONNECT_ENV` (after the secrets are loaded).
pub fn push_config(
    s: &connect_config::Settings,
) -> Result<PushConfig, connect_config::ConfigError> {
    Ok(PushConfig {
        vapid_private_key: s.optional("CONNECT_VAPID_PRIVATE_KEY"),
        vapid_contact: s.string("CONNECT_VAPID_CONTACT", "mailto:push@connect.invalid"),
        local: s.local(),
        sns: connect_push::sns::SnsConfig::from_lookup(|name| s.optional(name))?,
    })
}

impl HttpApi {
    /// The API a function that serves `serves` runs (its handler is [`HttpApi::handle`]).
    #[cfg(feature = "aws")]
    pub async fn serving(serves: Serves, s: &connect_config::Settings) -> Result<Self, SetupError> {
        let push = match serves {
            Serves::Push => Some(push_config(s)?),
            _ => None,
        };
        Self::from_settings(s, push, serves == Serves::Presence).await
    }

    #[cfg(feature = "aws")]
    /// Wired to DynamoDB from env: `CONNECT_JWT_SECRET` (and `CONNECT_JWT_SECRET_PREVIOUS`
    /// during a rotation), `CONNECT_JWT_ISSUER`, `CONNECT_JWT_AUDIENCE`,
    /// `CONNECT_JWT_MAX_LIFETIME_SECS`, `CONNECT_ENV`, `AWS_REGION`,
    /// `DYNAMODB_ENDPOINT`, `DYNAMODB_TIMEOUT_MS`, `CHAT_TABLE`, `GROUP_TABLE`, `INBOX_TABLE`,
    /// `PLACES_TABLE`, `PUSH_TABLE`,
    /// `GROUP_MAX_MEMBERS` (10000); with `push`, the push routes too (and `REDIS_URL`, the
    /// registrations' mirror); with `presence`, the presence route too (`REDIS_URL`,
    /// `GROUP_CACHE_TTL_SECS`, `GROUP_CACHE_MAX`).
    pub async fn from_settings(
        s: &connect_config::Settings,
        push: Option<PushConfig>,
        presence: bool,
    ) -> Result<Self, SetupError> {
        let (secret, previous) = connect_core::auth::JwtSecret::from_settings(s)?;
        let dynamo = connect_dynamo::client(&connect_dynamo::DynamoConfig::from_settings(s)?).await;
        let tables = connect_dynamo::Tables::from_settings(s);
        let store = Arc::new(connect_dynamo::DynamoChatStore::new(
            dynamo.clone(),
            &tables.chat,
            1,
        ));
        let inbox = Arc::new(connect_dynamo::DynamoInbox::new(dynamo.clone(), &tables));
        let ports = ApiPorts {
            history: store.clone(),
            chat: store,
            groups: Arc::new(connect_dynamo::DynamoGroups::new(
                dynamo.clone(),
                &tables.groups,
            )),
            inbox: inbox.clone(),
            markers: inbox,
            quotas: Arc::new(connect_dynamo::DynamoQuotas::new(
                dynamo.clone(),
                &tables.quotas,
            )),
        };
        let group_rules = group_rules(s)?;
        let mut api = Self::new(
            TokenVerifier::with_rules(&secret, &connect_core::auth::TokenRules::from_settings(s)?)
                .also(previous.as_ref()),
            ports,
            group_rules,
        );
        let redis_cfg = connect_redis::RedisConfig::from_settings(s)?;
        let redis = || async {
            connect_redis::connect(&redis_cfg)
                .await
                .map_err(|e| SetupError::Redis(e.to_string()))
        };
        if presence {
            let cfg = connect_redis::PresenceConfig::from_settings(
                s,
                &connect_core::regions::Regions::from_settings(s)?.local,
            )?;
            let rosters = groups::MembershipCache::new(
                api.ports.groups.clone(),
                std::time::Duration::from_secs(s.parsed("GROUP_CACHE_TTL_SECS", 60)?),
                s.parsed("GROUP_CACHE_MAX", 10_000)?,
            );
            api = api.with_presence(PresenceRead {
                store: Arc::new(connect_redis::RedisPresence::new(redis().await?, cfg)),
                rosters: Arc::new(rosters),
            });
        }
        Ok(match push {
            Some(config) => {
                let registry = Arc::new(connect_dynamo::DynamoPush::new(dynamo, &tables.push));
                let redis = redis().await?;
                let mirror = Arc::new(connect_redis::RedisPushDevices::new(redis));
                let mut settings = PushSettings::new(&config, registry, mirror)?;
                if config.sns.enabled() {
                    settings = settings
                        .with_platforms(Arc::new(connect_push::sns::Sns::new(&config.sns).await));
                }
                api.with_push(settings)
            }
            None => api,
        })
    }

    pub fn new(verifier: TokenVerifier, ports: ApiPorts, group_rules: GroupRules) -> Self {
        Self {
            verifier,
            ports,
            group_rules,
            push: None,
            presence: None,
        }
    }

    /// Serves the presence route too.
    pub fn with_presence(mut self, presence: PresenceRead) -> Self {
        self.presence = Some(presence);
        self
    }

    /// Serves the push routes too.
    pub fn with_push(mut self, push: PushSettings) -> Self {
        self.push = Some(push);
        self
    }

    fn admin(&self) -> Groups<'_> {
        Groups {
            store: &*self.ports.groups,
            quotas: &*self.ports.quotas,
            rules: self.group_rules,
        }
    }

    /// Serves one request (any route of [`ROUTES`]).
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let result = match route_of(&req) {
            Some(r) if r == HISTORY => self.history(&req).await,
            Some(r) if r == INBOX => self.inbox(&req).await,
            Some(r) if r == RECEIPTS => self.receipts(&req).await,
            Some(r) if r.function == "devices" => self.devices(r, &req).await,
            Some(r) if r == PRESENCE => self.presence(&req).await,
            Some(r) => self.groups(r, &req).await,
            None => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
        };
        result.unwrap_or_else(|e| error(&e))
    }

    fn caller(&self, req: &Request) -> Result<UserId, ApiError> {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing bearer token"))?;
        self.verifier.verify(token.trim()).map_err(|e| {
            tracing::debug!(cause = %e, "token refused");
            ApiError::new(ErrorCode::Unauthorized, connect_core::auth::REFUSED)
        })
    }

    async fn history(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = self.caller(req)?;
        let params = req.path_parameters();
        let conversation = params
            .first("conversation")
            .map(percent_decode)
            .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "missing conversation"))?;
        let query_params = req.query_string_parameters();
        let query = history::Query::parse(&conversation, |name| query_params.first(name))?;
        let page =
            history::read(&*self.ports.history, &*self.ports.groups, &caller, &query).await?;
        ok_json(&PageBody::from(page))
    }

    async fn inbox(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = self.caller(req)?;
        let params = req.query_string_parameters();
        let query = inbox::Query::parse(|name| params.first(name))?;
        let ports = inbox::InboxPorts {
            index: &*self.ports.inbox,
            markers: &*self.ports.markers,
            groups: &*self.ports.groups,
            chat: &*self.ports.chat,
            history: &*self.ports.history,
        };
        ok_json(&inbox::read(&ports, &caller, &query).await?)
    }

    async fn receipts(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = self.caller(req)?;
        let conversation = req
            .path_parameters()
            .first("conversation")
            .map(percent_decode)
            .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "missing conversation"))?;
        let params = req.query_string_parameters();
        let query = inbox::ReceiptsQuery::parse(&conversation, |name| params.first(name))?;
        let receipts =
            inbox::receipts(&*self.ports.markers, &*self.ports.groups, &caller, &query).await?;
        ok_json(&receipts)
    }
}

fn no_content() -> Response<Body> {
    Response::builder()
        .status(204)
        .body(Body::Empty)
        .unwrap_or_default()
}

fn body_of(req: &Request) -> &[u8] {
    match req.body() {
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    }
}

impl HttpApi {
    /// `GET /v1/users/{user}/presence`: the user's presence, for a caller who may watch them
    /// (PROTOCOL.md "Presence"), else 403.
    async fn presence(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = self.caller(req)?;
        let read = self
            .presence
            .as_ref()
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "presence is not served here"))?;
        let user = req
            .path_parameters()
            .first("user")
            .map(percent_decode)
            .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "missing user"))?;
        let user = UserId::parse(user)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("user: {e}")))?;
        let users = [user];
        let allowed = connect_core::presence::watchable(
            &caller,
            &users,
            &*self.ports.inbox,
            &*self.ports.groups,
            &read.rosters,
        )
        .await?;
        if allowed.first() != Some(&true) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "you share no conversation with this user",
            ));
        }
        let view = read.store.views(&users, None).await?[0];
        let [user] = users;
        let mut body = serde_json::json!({ "user": user, "online": view.online });
        if let Some(seen) = view.last_seen {
            body["last_seen"] = seen.into();
        }
        ok_json(&body)
    }

    /// The push routes: the VAPID key, a device's registration and its removal.
    async fn devices(&self, route: Route, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = self.caller(req)?;
        let push = self
            .push
            .as_ref()
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "push is not served here"))?;
        if route == VAPID {
            return ok_json(&serde_json::json!({ "public_key": push.vapid_public_key }));
        }
        let device = req
            .path_parameters()
            .first("device")
            .map(percent_decode)
            .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "missing device"))?;
        let device = connect_core::push::device_id(&device)?;
        if route == UNREGISTER_PUSH {
            push.registry.unregister(&caller, &device).await?;
            push.mirror.remove(&caller, &device).await?;
            return Ok(no_content());
        }
        let mut registration = connect_core::push::registration(body_of(req), push.rule)?;
        match &mut registration {
            connect_core::push::Registration::WebPush { endpoint, .. } => push
                .endpoints
                .check(endpoint, push.rule)
                .await
                .map_err(|m| ApiError::new(ErrorCode::BadRequest, m.0))?,
            // Its SNS platform endpoint, made before the registration is stored.
            connect_core::push::Registration::Mobile {
                platform,
                token,
                arn,
            } => *arn = push.platforms.endpoint(*platform, token).await?,
        }
        push.registry
            .register(&caller, &device, &registration, connect_core::now_ms())
            .await?;
        // After the table (the truth): a failure here answers 503 and the retry writes both.
        push.mirror.add(&caller, &device).await?;
        tracing::info!(user = %caller, device, kind = registration.kind(), "push registered");
        Ok(no_content())
    }

    async fn groups(&self, route: Route, req: &Request) -> Result<Response<Body>, ApiError> {
        let caller = self.caller(req)?;
        let params = req.path_parameters();
        let param = |name: &str| params.first(name).map(percent_decode).unwrap_or_default();
        let body = body_of(req);
        let admin = self.admin();
        let to_json = |v: serde_json::Value, status: u16| Ok(json(status, v.to_string()));
        match route {
            r if r == CREATE_GROUP => {
                let group = admin.create(&caller, groups::body(body)?).await?;
                to_json(serde_json::to_value(group).unwrap_or_default(), 201)
            }
            r if r == LIST_GROUPS => {
                let query = req.query_string_parameters();
                let query = groups::ListQuery::parse(|name| query.first(name))?;
                ok_json(&admin.list(&caller, &query).await?)
            }
            r if r == GET_GROUP => {
                let group = admin
                    .get(&caller, &groups::group_id(&param("group"))?)
                    .await?;
                to_json(serde_json::to_value(group).unwrap_or_default(), 200)
            }
            r if r == ADD_MEMBER => {
                let id = groups::group_id(&param("group"))?;
                let group = admin.add(&caller, &id, groups::body(body)?).await?;
                to_json(serde_json::to_value(group).unwrap_or_default(), 200)
            }
            r if r == REMOVE_MEMBER => {
                let id = groups::group_id(&param("group"))?;
                admin.remove(&caller, &id, &param("user")).await?;
                Ok(no_content())
            }
            _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
        }
    }
}

#[cfg(test)]
mod tests;
