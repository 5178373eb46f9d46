//! The PROXY protocol: the client an L4 load balancer names before the connection's bytes.
//!
//! A TCP (layer 4) balancer such as AWS NLB, HAProxy in `mode tcp` or a Kubernetes
//! ingress in passthrough mode opens its own connection to statuslens, so every request
//! would come from the balancer, and it adds no `X-Forwarded-For` to name the client: it
//! does not read HTTP. With `proxy.proxy_protocol = true` every connection must begin with
//! the header such balancers send (HAProxy's specification, version 1 text or version 2
//! binary), and its source address takes the peer's place everywhere: the access log,
//! `X-Forwarded-For` sent upstream, consumer identity, and the trusted-proxies walk.
//!
//! The specification forbids guessing whether a header is there, and so does statuslens:
//! with the setting on, a connection without one is closed and counted, and anyone who can
//! reach the listener can name any address, so only the balancer must be able to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Version 2's first twelve bytes; no HTTP request or TLS record begins so.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's header, `PROXY` to CRLF, is at most 107 bytes (the specification's bound).
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
/// Version 1's families, and the longest line each allows.
const V1_FAMILIES: [(&[u8], usize); 3] = [(b"TCP4 ", 56), (b"TCP6 ", 104), (b"UNKNOWN", V1_MAX)];
/// Version 2's header with its TLVs: addresses take at most 216 bytes, and balancers add
/// a few small TLVs (AWS a VPC endpoint id, Azure a link id). Larger is refused rather
/// than buffered for a peer that may not be a balancer at all.
pub const V2_MAX: usize = 4096;

/// What a connection's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is relayed for this client (an IPv4-mapped address as IPv4, as the
    /// listener reports peers).
    Proxied(SocketAddr),
    /// The balancer's own connection (a health check: version 2's LOCAL) or one whose
    /// source names no TCP client (version 1's UNKNOWN; version 2's UNSPEC, UNIX, UDP):
    /// the peer stays the peer.
    Local,
}

/// Why a connection's first bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Neither version's signature: a client speaking straight to the listener.
    #[error("the connection does not begin with a PROXY protocol header")]
    Missing,
    /// A signature, then something the specification does not allow.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// The header did not end within its version's bound.
    #[error("PROXY protocol header longer than {0} bytes")]
    TooLong(usize),
    /// The peer closed the connection inside the header (after `0` bytes of it).
    #[error("connection closed after {0} bytes of a PROXY protocol header")]
    Closed(usize),
}

/// A header and its length; None while more bytes could still make one.
pub type Parsed = Result<Option<(Header, usize)>, HeaderError>;

/// Reads the header at the front of `io`, reading into `buf`; what follows it in `buf` is
/// the client's first bytes. Reads as the bytes come: the caller bounds the time.
pub async fn read(io: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Header, HeaderError> {
    loop {
        if let Some((header, len)) = parse(buf)? {
            buf.drain(..len);
            return Ok(header);
        }
        match io.read_buf(buf).await {
            Ok(n) if n > 0 => {}
            _ => return Err(HeaderError::Closed(buf.len())),
        }
    }
}

/// The header at the front of `bytes` and its length, or None while more bytes could
/// still make one. Refuses as soon as the bytes seen cannot begin a header, so a client
/// that is not a balancer is closed at its first read, not at the timeout.
pub fn parse(bytes: &[u8]) -> Parsed {
    let seen = bytes.len().min(12);
    if bytes[..seen] == V2_SIGNATURE[..seen] {
        return if seen < 12 { Ok(None) } else { parse_v2(bytes) };
    }
    let seen = bytes.len().min(V1_PREFIX.len());
    if bytes[..seen] != V1_PREFIX[..seen] {
        return Err(HeaderError::Missing);
    }
    // The family bounds the line: two dotted quads and two ports make at most 56 bytes
    // with CRLF, two full IPv6 addresses 104, and UNKNOWN may use the whole 107.
    let rest = &bytes[seen..];
    let max = match V1_FAMILIES.iter().find(|(family, _)| {
        let n = rest.len().min(family.len());
        rest[..n] == family[..n]
    }) {
        None => {
            return Err(HeaderError::Malformed(
                "version 1 family is not TCP4, TCP6 or UNKNOWN",
            ))
        }
        Some((family, max)) if rest.len() >= family.len() => *max,
        Some(_) => V1_MAX,
    };
    let Some(end) = bytes.iter().take(max).position(|&b| b == b'\n') else {
        return if bytes.len() >= max {
            Err(HeaderError::TooLong(max))
        } else {
            Ok(None)
        };
    };
    let line = bytes[..end]
        .strip_suffix(b"\r")
        .ok_or(HeaderError::Malformed(
            "version 1 line does not end in CRLF",
        ))?;
    Ok(Some((parse_v1(line)?, end + 1)))
}

/// `PROXY TCP4|TCP6 source destination source-port destination-port`, or `PROXY UNKNOWN`
/// followed by anything (which the specification has the receiver ignore).
fn parse_v1(line: &[u8]) -> Result<Header, HeaderError> {
    let unknown = b"PROXY UNKNOWN";
    if line.starts_with(unknown) && matches!(line.get(unknown.len()), None | Some(b' ')) {
        return Ok(Header::Local);
    }
    let line = std::str::from_utf8(line).map_err(|_| HeaderError::Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked by the caller
    let family = fields.next().unwrap_or("");
    let fields: Vec<&str> = fields.collect();
    let [source, destination, source_port, destination_port] = fields[..] else {
        return Err(HeaderError::Malformed(
            "version 1 needs a family, two addresses and two ports, separated by one space",
        ));
    };
    // The destination is checked, not used: it is this listener's address.
    let source: IpAddr = match family {
        "TCP4" => {
            v1_address::<Ipv4Addr>(destination)?;
            v1_address::<Ipv4Addr>(source)?.into()
        }
        "TCP6" => {
            v1_address::<Ipv6Addr>(destination)?;
            v1_address::<Ipv6Addr>(source)?.into()
        }
        _ => {
            return Err(HeaderError::Malformed(
                "version 1 family is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let port = v1_port(source_port)?;
    v1_port(destination_port)?;
    Ok(Header::Proxied(SocketAddr::new(
        source.to_canonical(),
        port,
    )))
}

fn v1_address<A: std::str::FromStr>(text: &str) -> Result<A, HeaderError> {
    text.parse()
        .map_err(|_| HeaderError::Malformed("version 1 address does not match its family"))
}

/// A decimal port: digits only (Rust's parser would also take a `+`), no leading zero.
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let bad = HeaderError::Malformed("version 1 port is not a decimal 0 to 65535");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

/// The binary header: signature, version and command, family and transport, length,
/// addresses, then TLVs (skipped: nothing here needs them).
fn parse_v2(bytes: &[u8]) -> Parsed {
    // Each byte is judged as it arrives, so a stray peer is refused at once.
    let local = match bytes.get(12) {
        None => return Ok(None),
        Some(v) if v >> 4 != 2 => {
            return Err(HeaderError::Malformed(
                "version 2 signature with a version other than 2",
            ))
        }
        Some(v) if v & 0x0f == 0 => true,
        Some(v) if v & 0x0f == 1 => false,
        Some(_) => {
            return Err(HeaderError::Malformed(
                "version 2 command is neither LOCAL nor PROXY",
            ))
        }
    };
    // LOCAL: the specification has the receiver ignore the family.
    match bytes.get(13) {
        Some(f) if !local && (f >> 4 > 3 || f & 0x0f > 2) => {
            return Err(HeaderError::Malformed(
                "version 2 family or transport is unassigned",
            ))
        }
        _ if bytes.len() < 16 => return Ok(None),
        _ => {}
    }
    let len = 16 + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if len > V2_MAX {
        return Err(HeaderError::TooLong(V2_MAX));
    }
    if bytes.len() < len {
        return Ok(None);
    }
    let block = &bytes[16..len];
    // Only TCP over IPv4 or IPv6 names a client of this TCP connection. LOCAL, UNSPEC,
    // UNIX sockets, UDP: the real endpoints, as HAProxy's own receiver does.
    let source =
        match bytes[13] {
            _ if local => return Ok(Some((Header::Local, len))),
            0x11 => {
                let a: [u8; 12] = block.get(..12).and_then(|a| a.try_into().ok()).ok_or(
                    HeaderError::Malformed("version 2 IPv4 block shorter than 12 bytes"),
                )?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]]))
            }
            0x21 => {
                let a: [u8; 36] = block.get(..36).and_then(|a| a.try_into().ok()).ok_or(
                    HeaderError::Malformed("version 2 IPv6 block shorter than 36 bytes"),
                )?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&a[..16]);
                let ip = Ipv6Addr::from(ip).to_canonical();
                SocketAddr::new(ip, u16::from_be_bytes([a[32], a[33]]))
            }
            _ => return Ok(Some((Header::Local, len))),
        };
    Ok(Some((Header::Proxied(source), len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn proxied(addr: &str) -> Header {
        Header::Proxied(addr.parse().unwrap())
    }

    #[test]
    fn version_1_lines() {
        let cases: &[(&[u8], Parsed)] = &[
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8080\r\nGET /",
                Ok(Some((proxied("203.0.113.7:51234"), 44))),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8080\r\n",
                Ok(Some((proxied("[2001:db8::7]:443"), 45))),
            ),
            // A mapped IPv4 source is the IPv4 client, as for a dual-stack listener.
            (
                b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n",
                Ok(Some((proxied("203.0.113.7:1"), 39))),
            ),
            (b"PROXY UNKNOWN\r\n", Ok(Some((Header::Local, 15)))),
            (
                b"PROXY UNKNOWN ::1 ::1 1 2\r\n",
                Ok(Some((Header::Local, 27))),
            ),
            (b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 80", Ok(None)),
            (b"PROX", Ok(None)),
            (b"", Ok(None)),
            (b"GET / HTTP/1.1\r\n", Err(HeaderError::Missing)),
            (b"\x16\x03\x01", Err(HeaderError::Missing)),
        ];
        for (bytes, want) in cases {
            assert_eq!(&parse(bytes), want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn version_1_refusals_name_what_is_wrong() {
        for (line, why) in [
            (&b"PROXY TCP4 203.0.113.7 10.0.0.5 51234 8080\n"[..], "CRLF"),
            (
                b"PROXY TCP4 2001:db8::7 10.0.0.5 1 2\r\n",
                "match its family",
            ),
            (b"PROXY TCP6 203.0.113.7 ::1 1 2\r\n", "match its family"),
            (b"PROXY TCP5 203.0.113.7 10.0.0.5 1 2\r\n", "family"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.5 65536 2\r\n", "port"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.5 +1 2\r\n", "port"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.5 01 2\r\n", "port"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.5 1\r\n", "two ports"),
            (b"PROXY TCP4  203.0.113.7 10.0.0.5 1 2\r\n", "two ports"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.5 1 2 3\r\n", "two ports"),
        ] {
            let err = parse(line).unwrap_err().to_string();
            assert!(
                err.contains(why),
                "{:?}: {err}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn version_1_is_held_to_each_familys_longest_line() {
        // The longest lines each family can write are taken; a byte more is refused
        // without waiting for a line end.
        let v4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        let max6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let v6 = format!("PROXY TCP6 {max6} {max6} 65535 65535\r\n");
        let unknown = format!("PROXY UNKNOWN {}\r\n", "x".repeat(91));
        for (line, max) in [
            (&v4[..], 56),
            (v6.as_bytes(), 104),
            (unknown.as_bytes(), 107),
        ] {
            assert_eq!(line.len(), max);
            assert!(matches!(parse(line), Ok(Some((_, n))) if n == max), "{max}");
            let longer = [&line[..max - 2], b"00"].concat();
            assert_eq!(parse(&longer), Err(HeaderError::TooLong(max)));
        }
        // Bytes after UNKNOWN are ignored, whatever they are.
        assert_eq!(
            parse(b"PROXY UNKNOWN \xff\xfe\r\n"),
            Ok(Some((Header::Local, 18)))
        );
        // A family no line can have is refused at once.
        assert!(parse(b"PROXY TCP5").is_err());
        assert!(parse(b"PROXY tcp4").is_err());
        assert_eq!(parse(b"PROXY TCP"), Ok(None));
    }

    #[test]
    fn version_2_headers() {
        let mut v4 = vec![203, 0, 113, 7, 10, 0, 0, 5];
        v4.extend_from_slice(&51234u16.to_be_bytes());
        v4.extend_from_slice(&8080u16.to_be_bytes());
        let h = v2(1, 0x11, &v4);
        assert_eq!(parse(&h), Ok(Some((proxied("203.0.113.7:51234"), 28))));
        // TLVs after the addresses are skipped, and the client's bytes follow.
        let mut with_tlv = v4.clone();
        with_tlv.extend_from_slice(&[0xEA, 0, 3, b'v', b'p', b'c']);
        let mut h = v2(1, 0x11, &with_tlv);
        let header_len = h.len();
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&h),
            Ok(Some((proxied("203.0.113.7:51234"), header_len)))
        );
        // Every cut of it waits for more.
        for cut in 0..header_len {
            assert_eq!(parse(&h[..cut]), Ok(None), "cut at {cut}");
        }

        let mut v6 = Vec::new();
        v6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&443u16.to_be_bytes());
        v6.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(
            parse(&v2(1, 0x21, &v6)),
            Ok(Some((proxied("[2001:db8::7]:443"), 52)))
        );

        // A health check (LOCAL, whatever its family), and what names no TCP client (an
        // unspecified family or transport, a UNIX socket, UDP) keep the peer.
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Some((Header::Local, 16))));
        assert_eq!(parse(&v2(0, 0x11, &v4)), Ok(Some((Header::Local, 28))));
        assert_eq!(parse(&v2(0, 0xff, &[])), Ok(Some((Header::Local, 16))));
        assert_eq!(parse(&v2(1, 0x00, &[])), Ok(Some((Header::Local, 16))));
        assert_eq!(parse(&v2(1, 0x10, &v4)), Ok(Some((Header::Local, 28))));
        assert_eq!(parse(&v2(1, 0x12, &v4)), Ok(Some((Header::Local, 28))));
        assert_eq!(
            parse(&v2(1, 0x31, &[0; 216])),
            Ok(Some((Header::Local, 232)))
        );
        // TLVs up to the bound are taken.
        let mut big = v4.clone();
        big.resize(V2_MAX - 16, 0);
        assert_eq!(
            parse(&v2(1, 0x11, &big)),
            Ok(Some((proxied("203.0.113.7:51234"), V2_MAX)))
        );
        big.push(0);
        assert_eq!(parse(&v2(1, 0x11, &big)), Err(HeaderError::TooLong(V2_MAX)));
    }

    #[test]
    fn version_2_refusals() {
        let v4 = [0u8; 12];
        let mut bad_version = v2(1, 0x11, &v4);
        bad_version[12] = 0x11;
        for (h, why) in [
            (bad_version, "version other than 2"),
            (v2(2, 0x11, &v4), "command"),
            (v2(1, 0x41, &v4), "unassigned"),
            (v2(1, 0x13, &v4), "unassigned"),
            (v2(1, 0x11, &v4[..11]), "shorter than 12"),
            (v2(1, 0x21, &v4), "shorter than 36"),
        ] {
            let err = parse(&h).unwrap_err().to_string();
            assert!(err.contains(why), "{h:?}: {err}");
        }
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0x20, 0x00]);
        assert_eq!(parse(&huge), Err(HeaderError::TooLong(V2_MAX)));
        // Part of the signature, then something else.
        assert_eq!(parse(b"\r\n\r\nGET"), Err(HeaderError::Missing));
        // A bad version, command or family is refused as its byte arrives.
        for bytes in [&[0x31][..], &[0x22], &[0x21, 0x41]] {
            let h = [&V2_SIGNATURE[..], bytes].concat();
            assert!(parse(&h).is_err(), "{bytes:?}");
        }
        assert_eq!(
            parse(&[&V2_SIGNATURE[..], &[0x20, 0x41]].concat()),
            Ok(None)
        );
    }
}
