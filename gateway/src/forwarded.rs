//! The client's address behind trusted proxies (`GATEWAY_TRUSTED_PROXIES`): behind the ALB
//! every connection comes from one of a few load balancer addresses, so the per-address cap and
//! the logs take the address the proxies say they saw, in `X-Forwarded-For`. Only what trusted
//! proxies wrote is believed: from the right of the header (each proxy appends the address it
//! was reached from), entries are taken while the address they were handed by is a trusted
//! proxy's. A client's own `X-Forwarded-For`, sent straight to the gateway or to the left of the
//! proxies' entries, is never taken.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The networks whose connections are proxies that append to `X-Forwarded-For` (empty: none;
/// the header is ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Comma-separated networks (`10.40.0.0/16`) or addresses (`127.0.0.2`).
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|e| format!("{s:?}: {e}"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a connection from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            if !self.trusts(client) {
                break;
            }
            match entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
            {
                Ok(ip) => client = ip,
                // A trusted proxy wrote something that is no address: the proxy is all we know.
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_what_trusted_proxies_wrote_is_taken() {
        let alb = TrustedProxies::parse("10.40.0.0/16, 127.0.0.2").unwrap();
        let from_alb = ip("10.40.3.7");
        // The ALB appends the client it saw.
        assert_eq!(
            alb.client(from_alb, &headers(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
        // A client's forged entries sit to the left of what the ALB appended.
        assert_eq!(
            alb.client(from_alb, &headers(&["1.2.3.4, 5.6.7.8", "203.0.113.9"])),
            ip("203.0.113.9")
        );
        // A chain of trusted proxies is walked through.
        assert_eq!(
            alb.client(from_alb, &headers(&["198.51.100.1, 10.40.9.9"])),
            ip("198.51.100.1")
        );
        // Straight from an untrusted peer: its header is ignored.
        assert_eq!(
            alb.client(ip("198.51.100.7"), &headers(&["1.2.3.4"])),
            ip("198.51.100.7")
        );
        // No header, or garbage from a trusted proxy: the proxy's own address.
        assert_eq!(alb.client(from_alb, &HeaderMap::new()), from_alb);
        assert_eq!(alb.client(from_alb, &headers(&["unknown"])), from_alb);
        // A port is allowed; IPv6 too.
        assert_eq!(
            alb.client(from_alb, &headers(&["203.0.113.9:4711"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            alb.client(from_alb, &headers(&["2001:db8::1"])),
            ip("2001:db8::1")
        );
        // Nobody trusted (the default): never the header.
        let none = TrustedProxies::parse("").unwrap();
        assert_eq!(none.client(from_alb, &headers(&["203.0.113.9"])), from_alb);
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("alb").is_err());
    }
}
