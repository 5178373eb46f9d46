//! The client behind a load balancer: whose `X-Forwarded-For` is believed.
//!
//! Behind an L7 load balancer every connection comes from the balancer, so the access
//! log's `client` and a `client_ip` consumer would name it for every request. With
//! `proxy.trusted_proxies` set, a request from one of those addresses is attributed to
//! the address its `X-Forwarded-For` gives, read from the right past every trusted hop
//! (nginx's `set_real_ip_from` with `real_ip_recursive on`, Envoy's trusted hops). What
//! goes upstream is not changed: the peer is still appended to `X-Forwarded-For`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An address range: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net = IpAddr::from_str(addr).map_err(|_| {
            format!("{s:?} is not an address or range (e.g. \"10.0.0.0/8\", \"::1\")")
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{s:?}: the prefix length must be 1 to {max}")),
            },
        };
        // Clients on a dual-stack listener are matched as IPv4: so is `::ffff:a.b.c.d/n`.
        let (net, len) = match net {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if len >= 96 => (IpAddr::V4(v4), len - 96),
                Some(_) if len > 0 => {
                    return Err(format!(
                        "{s:?}: an IPv4-mapped range needs a prefix of 96 to 128"
                    ))
                }
                _ => (net, len),
            },
            v4 => (v4, len),
        };
        // Every address, and so every X-Forwarded-For entry, trusted: the walk would run
        // to the left end, which the client writes itself. After the mapping above, which
        // makes `::ffff:0.0.0.0/96` the IPv4 /0.
        if len == 0 {
            return Err(format!(
                "{s:?} trusts every address, so every client could name itself: list the load balancers"
            ));
        }
        let cidr = Cidr { net, len };
        // Host bits set ("10.1.2.3/8") usually mean a typo for a narrower range.
        if !cidr.is_network() {
            return Err(format!(
                "{s:?} has bits set past its /{len} prefix: write the network address"
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// Whether no bit past the prefix is set.
    fn is_network(&self) -> bool {
        match self.net {
            IpAddr::V4(net) => {
                let host = u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
                u32::from(net) & host == 0
            }
            IpAddr::V6(net) => {
                let host = u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
                u128::from(net) & host == 0
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// The proxies whose `X-Forwarded-For` is believed (none by default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// These ranges.
    pub fn new(ranges: Vec<Cidr>) -> Self {
        TrustedProxies(ranges)
    }

    /// Whether no proxy is trusted (every request is its peer's).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges as they were read: `10.0.0.0/8, 192.0.2.7/32`.
    pub fn describe(&self) -> String {
        let ranges: Vec<String> = self.0.iter().map(Cidr::to_string).collect();
        ranges.join(", ")
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client a request from `peer` stands for, when `peer` is trusted and its
    /// `X-Forwarded-For` lines (in order) name one: the rightmost address that is not
    /// itself trusted, or the leftmost when all are. Reading stops at an entry that is
    /// no address (`unknown`, a hostname): what stood right of it is the answer.
    pub fn client<'a, I>(&self, peer: IpAddr, forwarded_for: I) -> Option<IpAddr>
    where
        I: DoubleEndedIterator<Item = &'a [u8]>,
    {
        if self.0.is_empty() || !self.trusts(peer) {
            return None;
        }
        let mut client = None;
        for line in forwarded_for.rev() {
            for item in line.rsplit(|&b| b == b',') {
                let item = item.trim_ascii();
                if item.is_empty() {
                    continue;
                }
                let Some(ip) = address(item) else {
                    return client;
                };
                client = Some(ip);
                if !self.trusts(ip) {
                    return client;
                }
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry as an address: `203.0.113.7`, `2001:db8::1`, and the
/// forms with a port some balancers write (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn address(item: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(item).ok()?;
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'));
    let ip = match IpAddr::from_str(bare.unwrap_or(text)) {
        Ok(ip) => ip,
        Err(_) => SocketAddr::from_str(text).ok()?.ip(),
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(t: &TrustedProxies, peer: &str, lines: &[&str]) -> Option<IpAddr> {
        t.client(ip(peer), lines.iter().map(|l| l.as_bytes()))
    }

    #[test]
    fn ranges_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.1.1")), "mapped IPv6 is its IPv4");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let wide: Cidr = "128.0.0.0/1".parse().unwrap();
        assert!(wide.contains(ip("198.51.100.1")) && !wide.contains(ip("10.0.0.1")));
        assert!(!wide.contains(ip("2001:db8::1")), "no family crosses");
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped, "10.0.0.0/8".parse().unwrap());
        assert!(mapped.contains(ip("10.3.3.3")) && mapped.contains(ip("::ffff:10.3.3.3")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert_eq!(v6.to_string(), "2001:db8::/32");
        for (bad, says) in [
            ("10.0.0.0/33", "1 to 32"),
            ("10.0.0.0/+8", "1 to 32"),
            ("::/129", "1 to 128"),
            ("0.0.0.0/0", "every client could name itself"),
            ("::/0", "every client could name itself"),
            ("::ffff:0.0.0.0/96", "every client could name itself"),
            ("::ffff:0:0/96", "every client could name itself"),
            ("::ffff:10.0.0.0/8", "96 to 128"),
            ("10.1.2.3/8", "write the network address"),
            ("lb.internal", "not an address or range"),
            ("10.0.0.0/x", "prefix length"),
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(err.contains(says) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_of_a_trusted_peer() {
        let t = trusted(&["10.0.0.0/8", "127.0.0.1"]);
        // An untrusted peer's header is the client's own claim: ignored.
        assert_eq!(client(&t, "198.51.100.9", &["203.0.113.7"]), None);
        // A trusted peer with nothing to say: the peer stands.
        assert_eq!(client(&t, "10.0.0.5", &[]), None);
        assert_eq!(client(&t, "10.0.0.5", &[" , "]), None);
        // The balancer appended the client: it wins; a spoofed entry left of it does not.
        assert_eq!(
            client(&t, "10.0.0.5", &["1.1.1.1, 203.0.113.7"]),
            Some(ip("203.0.113.7"))
        );
        // Trusted hops are skipped, across several lines, right to left.
        assert_eq!(
            client(
                &t,
                "10.0.0.5",
                &["1.1.1.1, 203.0.113.7", "10.9.9.9,127.0.0.1"]
            ),
            Some(ip("203.0.113.7"))
        );
        // All trusted: the leftmost.
        assert_eq!(
            client(&t, "10.0.0.5", &["10.1.1.1, 10.2.2.2"]),
            Some(ip("10.1.1.1"))
        );
        // Garbage stops the walk; what stood right of it is the answer (none here).
        assert_eq!(client(&t, "10.0.0.5", &["203.0.113.7, unknown"]), None);
        assert_eq!(
            client(&t, "10.0.0.5", &["unknown, 10.2.2.2"]),
            Some(ip("10.2.2.2"))
        );
        // Ports and brackets some balancers write, IPv6, and a dual-stack peer.
        for (peer, line, want) in [
            ("10.0.0.5", "203.0.113.7:4711", "203.0.113.7"),
            ("10.0.0.5", "[2001:db8::1]:4711", "2001:db8::1"),
            ("10.0.0.5", "[2001:db8::1]", "2001:db8::1"),
            ("::ffff:10.0.0.5", "2001:db8::2", "2001:db8::2"),
        ] {
            assert_eq!(client(&t, peer, &[line]), Some(ip(want)), "{line}");
        }
        // Nothing trusted: never read.
        assert_eq!(
            client(&TrustedProxies::default(), "10.0.0.5", &["203.0.113.7"]),
            None
        );
    }
}
