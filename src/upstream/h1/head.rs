//! Message heads on an upstream connection: the request head limpet writes, the response head it reads (with
//! `httparse`), and how the response's body is framed (RFC 9112 §6.3).

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// At most this many header lines in a response head (hyper's default for its client, which this replaces).
pub const MAX_HEADERS: usize = 100;

/// How a request's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body bytes follow the head.
    Empty,
    /// Exactly the `Content-Length` the head carries.
    Length,
    /// `Transfer-Encoding: chunked`, added by [`encode_request`].
    Chunked,
}

/// Writes a request head: the request line with an origin-form target, every header, and the chunked coding
/// when the body's length is not known.
pub fn encode_request(parts: &http::request::Parts, framing: RequestFraming, out: &mut Vec<u8>) {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == RequestFraming::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head as read.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Parses a response head at the start of `buf` and takes it off: None while it is incomplete. Header values
/// are slices of the head's bytes, not copies.
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, &'static str> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut lines);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many headers"),
        Err(_) => return Err("malformed response head"),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("invalid status code")?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let start = buf.as_ptr() as usize;
    let mut named = Vec::with_capacity(parsed.headers.len());
    for line in parsed.headers.iter() {
        let name =
            HeaderName::from_bytes(line.name.as_bytes()).map_err(|_| "invalid header name")?;
        let from = match line.value.len() {
            0 => 0,
            n => (line.value.as_ptr() as usize)
                .checked_sub(start)
                .filter(|from| from + n <= len)
                .ok_or("header value outside the head")?,
        };
        named.push((name, from..from + line.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(named.len());
    for (name, range) in named {
        let value = HeaderValue::from_maybe_shared(head.slice(range))
            .map_err(|_| "invalid header value")?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
    }))
}

/// How a response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// The framing of a response to a request made with `method` (RFC 9112 §6.3). A length that is not one number,
/// or a length beside a transfer coding, is refused: a client or cache behind limpet might read it otherwise.
pub fn response_framing(method: &Method, head: &ResponseHead) -> Result<BodyFraming, &'static str> {
    let status = head.status;
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyFraming::Empty);
    }
    let h = &head.headers;
    if h.contains_key(header::TRANSFER_ENCODING) {
        if h.contains_key(header::CONTENT_LENGTH) {
            return Err("Content-Length with Transfer-Encoding");
        }
        let last = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => BodyFraming::Chunked,
            _ => BodyFraming::Close,
        });
    }
    let mut length = None;
    for value in h.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| "invalid Content-Length")?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid Content-Length");
            }
            let n: u64 = part.parse().map_err(|_| "invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Close,
    })
}

/// Does a comma-separated header hold `token` (case-insensitive), in any of its values?
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// May the connection carry another request after this response (its body read whole)?
pub fn keeps_alive(head: &ResponseHead, framing: BodyFraming) -> bool {
    if framing == BodyFraming::Close {
        return false;
    }
    let has = |token: &str| has_token(&head.headers, &header::CONNECTION, token);
    match head.version {
        Version::HTTP_10 => has("keep-alive"),
        _ => !has("close"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ResponseHead>, &'static str> {
        parse_response(&mut BytesMut::from(text.as_bytes()))
    }

    fn framing(method: Method, text: &str) -> Result<BodyFraming, &'static str> {
        let head = parse(text).unwrap().unwrap();
        response_framing(&method, &head)
    }

    #[test]
    fn encodes_a_request_head() {
        let mut req = http::Request::new(());
        *req.uri_mut() = "/a?b=1".parse().unwrap();
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("x"));
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        encode_request(&parts, RequestFraming::Chunked, &mut out);
        assert_eq!(
            out,
            b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn parses_heads_whole_or_not_yet() {
        assert!(parse("HTTP/1.1 200 OK\r\nA: b\r\n").unwrap().is_none());
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: b\r\nA: c\r\n\r\nbody"[..]);
        let head = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"body");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers.get_all("a").iter().count(), 2);
        assert!(parse("HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nA b\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nA: b\x01\r\n\r\n").is_err());
    }

    #[test]
    fn frames_bodies_as_rfc_9112_says() {
        use BodyFraming::*;
        let get = || Method::GET;
        assert_eq!(
            framing(Method::HEAD, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Empty)
        );
        assert_eq!(framing(get(), "HTTP/1.1 204 No Content\r\n\r\n"), Ok(Empty));
        assert_eq!(
            framing(
                get(),
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"
            ),
            Ok(Empty)
        );
        assert_eq!(
            framing(get(), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok(Length(5))
        );
        assert_eq!(
            framing(get(), "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            Ok(Length(5))
        );
        assert_eq!(
            framing(get(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(Empty)
        );
        assert!(framing(
            get(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
        )
        .is_err());
        assert!(framing(get(), "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n").is_err());
        assert!(framing(
            get(),
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"
        )
        .is_err());
        assert!(framing(
            get(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        assert_eq!(
            framing(
                get(),
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            ),
            Ok(Chunked)
        );
        assert_eq!(
            framing(
                get(),
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
            ),
            Ok(Close)
        );
        assert_eq!(framing(get(), "HTTP/1.1 200 OK\r\n\r\n"), Ok(Close));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |text: &str| {
            let head = parse(text).unwrap().unwrap();
            let f = response_framing(&Method::GET, &head).unwrap();
            keeps_alive(&head, f)
        };
        assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"));
        assert!(!ka(
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"));
        assert!(ka(
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka("HTTP/1.1 200 OK\r\n\r\n"));
    }
}
