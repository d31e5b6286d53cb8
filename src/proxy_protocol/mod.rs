//! PROXY protocol v1 and v2 (HAProxy's `proxy-protocol.txt`): a pure parser and a reader that
//! takes exactly the header off a stream, so the bytes after it are left for TLS or HTTP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// What a PROXY header said about the original connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// v1 `UNKNOWN`, v2 `LOCAL` or v2 `AF_UNSPEC`: keep the peer address.
    Local,
    /// The client and the address it connected to, as seen by the balancer in front.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyProtocolError {
    #[error("connection does not start with a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 header has no CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 header has unsupported version {0}")]
    V2Version(u8),
    #[error("PROXY v2 header has unknown command {0:#x}")]
    V2Command(u8),
    #[error("PROXY v2 header has unsupported family/transport {0:#04x}")]
    V2Family(u8),
    #[error("PROXY v2 header declares {0} bytes, more than the {V2_MAX_PAYLOAD} allowed")]
    V2TooLong(usize),
    #[error("PROXY v2 header declares {0} bytes, too few for its addresses")]
    V2Truncated(usize),
    #[error("connection closed before the PROXY header was complete")]
    Closed,
    #[error("no complete PROXY header before the deadline")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Io(io::ErrorKind),
}

/// Longest v1 header, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// Bound on the v2 payload (addresses + TLVs) after the 16-byte fixed part.
pub const V2_MAX_PAYLOAD: usize = 1024;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;

/// Parse a header at the start of `buf`. `Ok(None)` = need more bytes;
/// `Ok(Some((header, consumed)))` = the header and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyProtocolError::NotProxy),
    }
}

/// Do these first bytes of a connection start a PROXY header (v1 or v2)? None while too few to tell.
pub fn starts_header(buf: &[u8]) -> Option<bool> {
    let matches = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        (buf[..n] == sig[..n]).then_some(n == sig.len())
    };
    match (matches(V1_PREFIX), matches(&V2_SIGNATURE)) {
        (Some(true), _) | (_, Some(true)) => Some(true),
        (None, None) => Some(false),
        _ => None,
    }
}

/// Read exactly the PROXY header from `stream`, never past it, within `timeout`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyProtocolError> {
    tokio::time::timeout(timeout, read_header_inner(stream))
        .await
        .unwrap_or(Err(ProxyProtocolError::Timeout))
}

async fn read_header_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<ProxyHeader, ProxyProtocolError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    loop {
        if let Some((header, _)) = parse(&buf)? {
            return Ok(header);
        }
        let start = buf.len();
        buf.resize(start + bytes_wanted(&buf), 0);
        stream
            .read_exact(&mut buf[start..])
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ProxyProtocolError::Closed,
                kind => ProxyProtocolError::Io(kind),
            })?;
    }
}

/// How many more bytes an incomplete header surely needs: v1 is read byte-wise up to its CRLF,
/// v2 as its fixed part and then its declared payload.
fn bytes_wanted(buf: &[u8]) -> usize {
    match buf.first() {
        Some(b'\r') if buf.len() < V2_FIXED_LEN => V2_FIXED_LEN - buf.len(),
        Some(b'\r') => (V2_FIXED_LEN + v2_payload_len(buf))
            .saturating_sub(buf.len())
            .max(1),
        _ => 1,
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let prefix_len = buf.len().min(V1_PREFIX.len());
    if buf[..prefix_len] != V1_PREFIX[..prefix_len] {
        return Err(ProxyProtocolError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = v1_line_end(window)? else {
        return match buf.len() >= V1_MAX_LEN {
            true => Err(ProxyProtocolError::V1TooLong),
            false => Ok(None),
        };
    };
    // v1_line_end accepted only printable ASCII before the CRLF.
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyProtocolError::V1Malformed("not ASCII"))?;
    Ok(Some((parse_v1_line(line)?, end + 2)))
}

/// Index of the CR of the first CRLF, rejecting any other control byte before it.
fn v1_line_end(window: &[u8]) -> Result<Option<usize>, ProxyProtocolError> {
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' => match window.get(i + 1) {
                Some(b'\n') => return Ok(Some(i)),
                Some(_) => return Err(ProxyProtocolError::V1Malformed("CR without LF")),
                None => return Ok(None),
            },
            b' '..=b'~' => {}
            _ => return Err(ProxyProtocolError::V1Malformed("control or non-ASCII byte")),
        }
    }
    Ok(None)
}

fn parse_v1_line(line: &str) -> Result<ProxyHeader, ProxyProtocolError> {
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked by the caller
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return Ok(ProxyHeader::Local);
    }
    let parts: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = parts[..] else {
        return Err(ProxyProtocolError::V1Malformed(
            "expected 4 fields after the protocol",
        ));
    };
    let (src, dst) = match family {
        "TCP4" => (v1_ipv4(src)?, v1_ipv4(dst)?),
        "TCP6" => (v1_ipv6(src)?, v1_ipv6(dst)?),
        _ => {
            return Err(ProxyProtocolError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(src, v1_port(sport)?),
        destination: SocketAddr::new(dst, v1_port(dport)?),
    })
}

fn v1_ipv4(s: &str) -> Result<IpAddr, ProxyProtocolError> {
    s.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .map_err(|_| ProxyProtocolError::V1Malformed("bad IPv4 address"))
}

fn v1_ipv6(s: &str) -> Result<IpAddr, ProxyProtocolError> {
    s.parse::<Ipv6Addr>()
        .map(IpAddr::V6)
        .map_err(|_| ProxyProtocolError::V1Malformed("bad IPv6 address"))
}

/// A decimal port 0..=65535: digits only, no sign, no leading zero.
fn v1_port(s: &str) -> Result<u16, ProxyProtocolError> {
    let bad = ProxyProtocolError::V1Malformed("bad port");
    let digits_only = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn v2_payload_len(buf: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([buf[14], buf[15]]))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] != V2_SIGNATURE[..sig_len] {
        return Err(ProxyProtocolError::NotProxy);
    }
    if buf.len() < V2_FIXED_LEN {
        return Ok(None);
    }
    let (version, command, family) = (buf[12] >> 4, buf[12] & 0x0f, buf[13]);
    if version != 2 {
        return Err(ProxyProtocolError::V2Version(version));
    }
    if command > 1 {
        return Err(ProxyProtocolError::V2Command(command));
    }
    let len = v2_payload_len(buf);
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyProtocolError::V2TooLong(len));
    }
    let total = V2_FIXED_LEN + len;
    let Some(payload) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(None);
    };
    let header = match command {
        0 => ProxyHeader::Local,
        _ => v2_addresses(family, payload)?,
    };
    Ok(Some((header, total)))
}

/// The address block of a v2 PROXY command; TLVs after it are skipped.
fn v2_addresses(family: u8, payload: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    const TCP4: u8 = 0x11;
    const TCP6: u8 = 0x21;
    let (ip_len, need) = match family {
        f if f >> 4 == 0 => return Ok(ProxyHeader::Local),
        TCP4 => (4, 12),
        TCP6 => (16, 36),
        _ => return Err(ProxyProtocolError::V2Family(family)),
    };
    if payload.len() < need {
        return Err(ProxyProtocolError::V2Truncated(payload.len()));
    }
    let ip = |b: &[u8]| -> IpAddr {
        match <[u8; 4]>::try_from(b) {
            Ok(v4) => IpAddr::from(v4),
            Err(_) => IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or([0; 16])),
        }
    };
    let ports = &payload[2 * ip_len..need];
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(
            ip(&payload[..ip_len]),
            u16::from_be_bytes([ports[0], ports[1]]),
        ),
        destination: SocketAddr::new(
            ip(&payload[ip_len..2 * ip_len]),
            u16::from_be_bytes([ports[2], ports[3]]),
        ),
    })
}

#[cfg(test)]
mod tests;
