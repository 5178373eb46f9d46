//! Client addresses as text, written without `core::fmt`.
//!
//! Every request writes its client's address twice (`X-Forwarded-For` and the access
//! log's `client`); through `Display` that cost 1,100–1,800 instructions each
//! (callgrind; the formatting machinery pads every octet). IPv4 is written by hand here; IPv6, rarer and
//! with compression rules worth not redoing, still goes through `Display`.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// An address written into a stack buffer.
pub struct IpText {
    buf: [u8; 64],
    len: usize,
}

impl IpText {
    /// `ip` as `Display` writes it.
    pub fn ip(ip: IpAddr) -> Self {
        let mut t = IpText::empty();
        match ip {
            IpAddr::V4(v4) => t.v4(v4),
            IpAddr::V6(_) => t.display(ip),
        }
        t
    }

    /// `addr` as `Display` writes it: `ip:port`, `[ip]:port` for IPv6.
    pub fn socket(addr: SocketAddr) -> Self {
        let mut t = IpText::empty();
        match addr {
            SocketAddr::V4(v4) => {
                t.v4(*v4.ip());
                t.push(b":");
                t.push(itoa::Buffer::new().format(v4.port()).as_bytes());
            }
            SocketAddr::V6(_) => t.display(addr),
        }
        t
    }

    /// The text (checked as UTF-8 on each call: some hundred instructions for an
    /// address, so where it may not be needed, prefer `Display`).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("addresses are ASCII")
    }

    /// The text, as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn empty() -> Self {
        IpText {
            buf: [0; 64],
            len: 0,
        }
    }

    fn v4(&mut self, ip: Ipv4Addr) {
        // Byte stores, not slice copies: a copy of one to three digits was a memcpy
        // call each, seven per address (callgrind).
        let mut n = self.len;
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.buf[n] = b'.';
                n += 1;
            }
            if octet >= 100 {
                self.buf[n] = b'0' + octet / 100;
                n += 1;
            }
            if octet >= 10 {
                self.buf[n] = b'0' + octet / 10 % 10;
                n += 1;
            }
            self.buf[n] = b'0' + octet % 10;
            n += 1;
        }
        self.len = n;
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn display(&mut self, value: impl std::fmt::Display) {
        let mut cursor = std::io::Cursor::new(&mut self.buf[..]);
        // The longest IPv6 socket address with a scope id is 55 bytes.
        write!(cursor, "{value}").expect("an address fits in 64 bytes");
        self.len = cursor.position() as usize;
    }
}

impl std::fmt::Display for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    #[test]
    fn writes_what_display_writes() {
        let v4 = [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(9, 10, 99, 100),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(192, 168, 1, 20),
        ];
        for ip in v4 {
            for port in [0, 7, 80, 8080, 65535] {
                let addr = SocketAddr::from((ip, port));
                assert_eq!(IpText::socket(addr).as_str(), addr.to_string());
            }
            assert_eq!(IpText::ip(ip.into()).as_str(), ip.to_string());
        }
        // Every octet value, in every position.
        for b in 0..=255u8 {
            let ip = Ipv4Addr::new(b, 255 - b, b / 3, b.wrapping_mul(7));
            assert_eq!(IpText::ip(ip.into()).as_str(), ip.to_string());
        }
        let v6 = [
            Ipv6Addr::LOCALHOST,
            "2001:db8::1".parse().unwrap(),
            "::ffff:203.0.113.9".parse().unwrap(),
            Ipv6Addr::new(
                0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
            ),
        ];
        for ip in v6 {
            assert_eq!(IpText::ip(ip.into()).as_str(), ip.to_string());
            let addr = SocketAddr::V6(SocketAddrV6::new(ip, 65535, 0, u32::MAX));
            assert_eq!(IpText::socket(addr).as_str(), addr.to_string());
        }
    }
}
