//! Where a push may go. A web push endpoint is a URL a client chose: unchecked, it would make
//! the push function a proxy into our own network (SSRF). So an endpoint must be `https` and
//! every address its host resolves to must be public, checked at registration and again at
//! every send; the HTTP client resolves through [`CheckedResolver`], which refuses private
//! addresses at connection time too, and never follows a redirect. Only the local stack also
//! reaches its own push service on `http://localhost` or `http://127.0.0.1`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use connect_core::push::EndpointRule;
use hyper_util::client::legacy::connect::dns::Name;

use crate::PushError;

/// Whether an address is on the public internet: not private, loopback, link-local,
/// unspecified, multicast, broadcast, shared (CGNAT), benchmarking, documentation or reserved;
/// an IPv4-mapped or NAT64 IPv6 address is judged by the IPv4 address inside.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_v4(v4);
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        }
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || a >= 240) // reserved
}

/// How long resolving an endpoint's name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves `host` and checks every address; none, or any that is not public, refuses.
async fn resolve_public(host: &str, allow_loopback: bool) -> Result<Vec<SocketAddr>, PushError> {
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, 0)))
        .await
        .map_err(|_| PushError::Unavailable(format!("resolving {host} timed out")))?
        .map_err(|e| PushError::Refused(format!("endpoint host {host} does not resolve: {e}")))?;
    let addrs: Vec<SocketAddr> = lookup.collect();
    if addrs.is_empty() {
        return Err(PushError::Refused(format!(
            "endpoint host {host} has no address"
        )));
    }
    if let Some(bad) = addrs
        .iter()
        .find(|a| !(is_public(a.ip()) || (allow_loopback && a.ip().is_loopback())))
    {
        return Err(PushError::Refused(format!(
            "endpoint host {host} resolves to {}, which is not a public address",
            bad.ip()
        )));
    }
    Ok(addrs)
}

/// Checks an endpoint: its form ([`EndpointRule::check`]) and the addresses of its host (an
/// address literal, or every address its name resolves to, must be public). Returns whether it
/// is the local stack's own push service.
pub async fn check(endpoint: &str, rule: EndpointRule) -> Result<bool, PushError> {
    let (host, local) = rule
        .check(endpoint)
        .map_err(|e| PushError::Refused(e.message))?;
    if local {
        return Ok(true);
    }
    match host.parse::<IpAddr>() {
        Ok(ip) if is_public(ip) => Ok(false),
        Ok(ip) => Err(PushError::Refused(format!(
            "endpoint address {ip} is not a public address"
        ))),
        Err(_) => resolve_public(host, false).await.map(|_| false),
    }
}

/// The HTTP client's resolver: every address a name resolves to must be public (the local
/// stack's client also takes `localhost`'s loopback), checked when the connection is made.
#[derive(Clone, Debug, Default)]
pub struct CheckedResolver {
    /// Loopback allowed (the local stack's own push service only).
    pub allow_loopback: bool,
}

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_loopback = self.allow_loopback && name.as_str() == "localhost";
        Box::pin(async move {
            resolve_public(name.as_str(), allow_loopback)
                .await
                .map(Vec::into_iter)
                .map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fc00::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            "ff02::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "142.250.74.100",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn endpoints_into_our_network_are_refused() {
        let prod = EndpointRule::default();
        let local = EndpointRule { allow_local: true };
        for endpoint in [
            "http://10.0.0.1/push",
            "https://10.0.0.1/push",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            // A name that resolves to loopback.
            "https://localhost/x",
            "http://localhost:8095/notify/x",
        ] {
            assert!(
                matches!(check(endpoint, prod).await, Err(PushError::Refused(_))),
                "{endpoint}"
            );
        }
        assert!(check("https://localhost/x", local).await.is_err());
        assert_eq!(
            check("http://localhost:8095/notify/x", local).await,
            Ok(true)
        );
        assert_eq!(check("https://8.8.8.8/x", prod).await, Ok(false));
    }

    #[tokio::test]
    async fn the_resolver_refuses_loopback_unless_local() {
        use tower_service::Service as _;
        let name: Name = "localhost".parse().unwrap();
        let mut strict = CheckedResolver::default();
        assert!(strict.call(name.clone()).await.is_err());
        let mut local = CheckedResolver {
            allow_loopback: true,
        };
        assert!(local
            .call(name)
            .await
            .unwrap()
            .all(|a| a.ip().is_loopback()));
    }
}
