//! The HTTP API's functions (`history`, `groups`): an API Gateway v2 event, parsed as the
//! Lambda runtime parses it, handled over in-memory ports. Never a panic; every answer is one
//! of the contract's statuses, and an error's body is the contract's error shape.
//!
//! The input is split on newlines into method, path, query, body, whether to send a valid
//! token, and request headers, and built into the event exactly as the local HTTP API builds
//! it. (Raw event JSON is not fuzzed: lambda_http 1.3.2 panics on events API Gateway never
//! sends, such as a `rawQueryString` with a character not allowed in a URI or a domain name
//! that is not valid IDNA, or a path with a fragment; what a client controls goes through `event_json`, which keeps
//! `host` and `x-forwarded-proto` API Gateway's own.)
#![no_main]

use std::sync::Arc;

use connect_api::{event_json, match_route, ApiPorts, HttpApi};
use connect_core::auth::{JwtSecret, TokenIssuer, TokenVerifier};
use connect_core::memory::Memory;
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 10] = [200, 201, 204, 400, 401, 403, 404, 409, 413, 500];

fn event(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let method = lines.next()?;
    let path = lines.next().unwrap_or("/");
    let query = lines.next().unwrap_or("");
    let body = lines.next().unwrap_or("");
    let authorized = lines.next().is_some_and(|a| a.starts_with('y'));
    // What hyper (the local API) or API Gateway hands on is a valid URI: a path or query that
    // is not one never reaches the function. Neither hands on a fragment (`#…` stays in the
    // client; after one, `http::Uri` takes bytes no request target has, which lambda_http
    // 1.3.2 percent-encodes past a URI's 64 KiB and panics on), nor a request line over API
    // Gateway's 10,240 bytes.
    if path.contains('#') || query.contains('#') || path.len() + query.len() > 10_240 {
        return None;
    }
    format!("{path}?{query}").parse::<http::Uri>().ok()?;
    let (route, params) = match_route(method, path)?;
    // The rest: request headers as a client sends them (`name: value`), host included.
    let mut headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    if authorized {
        let secret = JwtSecret::new(None, false).ok()?;
        headers.push((
            "authorization".to_owned(),
            format!("Bearer {}", TokenIssuer::new(&secret).mint("alice", 600)),
        ));
    }
    Some(event_json(
        &route,
        &params,
        path,
        query,
        &headers,
        body,
        "127.0.0.1",
    ))
}

fuzz_target!(|data: &[u8]| {
    let Some(event) = event(data) else { return };
    let Ok(request) = lambda_http::request::from_str(&event) else {
        return;
    };
    let memory = Arc::new(Memory::default());
    let api = HttpApi::new(
        TokenVerifier::new(&JwtSecret::new(None, false).unwrap()),
        ApiPorts::all(memory),
        connect_core::groups::GroupRules::new(
            connect_core::groups::Caps {
                members: 100,
                groups_per_user: 100,
            },
            100,
            1000,
        ),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let response = runtime.block_on(api.handle(request));
    let status = response.status().as_u16();
    assert!(STATUSES.contains(&status), "status {status}");
    if status >= 400 {
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert!(body["error"]["code"].is_string(), "{body}");
    }
});
