//! Engine.IO wire parsing: where a request carries its sid, and which sid a handshake answer opens.
//!
//! Pure functions over borrowed input: no I/O, and no allocation except in [`decode_sid`] when the
//! sid really is percent-encoded.

use std::borrow::Cow;

/// Longest sid limpet accepts (decoded); a longer one is treated as unknown.
pub const MAX_SID_LEN: usize = 128;

/// Longest raw (percent-encoded) sid limpet decodes: a MAX_SID_LEN sid with every byte escaped.
const MAX_RAW_SID_LEN: usize = 3 * MAX_SID_LEN;

/// The most bytes of a handshake answer limpet will inspect.
pub const HANDSHAKE_PEEK_LIMIT: usize = 4096;

/// Body limpet answers for a session it cannot route (what Engine.IO itself answers).
pub const SESSION_UNKNOWN_BODY: &str = r#"{"code":1,"message":"Session ID unknown"}"#;

/// Most decimal digits in an EIO=3 payload length prefix.
const MAX_LEN_DIGITS: usize = 10;

/// Value of query parameter `name` (raw, not percent-decoded) in a query string (without '?').
///
/// The first occurrence wins; a parameter without `=` has the empty value.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// The raw `sid` query parameter, if present and non-empty; [`decode_sid`] bounds and decodes it.
pub fn query_sid(query: &str) -> Option<&str> {
    query_param(query, "sid").filter(|sid| !sid.is_empty())
}

/// True for an Engine.IO handshake request: has `EIO=` and no `sid`.
///
/// An empty `sid=` counts as none, as it does for Engine.IO. A `transport=websocket` handshake
/// is one too; its open packet travels inside the tunnel, not in a response body.
pub fn is_handshake(query: &str) -> bool {
    query_param(query, "EIO").is_some_and(|v| !v.is_empty())
        && query_param(query, "sid").is_none_or(str::is_empty)
}

/// The raw `io` cookie value from a Cookie request header value (like query_sid, undecoded).
pub fn cookie_sid(cookie: &str) -> Option<&str> {
    cookie.split(';').find_map(io_cookie_value)
}

/// The `io` value from a Set-Cookie response header value ("io=abc; Path=/; HttpOnly; SameSite=Lax").
pub fn set_cookie_sid(set_cookie: &str) -> Option<&str> {
    set_cookie.split(';').next().and_then(io_cookie_value)
}

/// Percent-decodes a sid taken from a query string or a cookie, borrowing when there is nothing to decode.
///
/// Engine.IO clients send the sid through `encodeURIComponent`, and its cookie is encoded the same
/// way, while the handshake body carries it raw: decode before using a query or cookie sid as a table
/// key. `+` is left alone. None (an unknown sid) for a malformed escape, a result that is not UTF-8, or
/// one that is empty or longer than MAX_SID_LEN bytes.
pub fn decode_sid(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('%') {
        return acceptable(raw).then_some(Cow::Borrowed(raw));
    }
    if raw.len() > MAX_RAW_SID_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = hex_value(bytes.next()?)?;
            let lo = hex_value(bytes.next()?)?;
            out.push(hi << 4 | lo);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|sid| acceptable(sid))
        .map(Cow::Owned)
}

/// The sid of an Engine.IO open packet at the start of a handshake response body.
///
/// Accepts an EIO=4 body (`0{…}`, maybe followed by `\x1e` and more packets), an EIO=3 text payload
/// (`<len>:0{…}…`) and an EIO=3 binary payload (`0x00`, one byte per length digit, `0xFF`, `0{…}`).
/// A body cut before the sid's closing quote gives None, never a truncated sid.
pub fn handshake_sid(body: &[u8]) -> Option<&str> {
    let packet = match *body.first()? {
        b'0' => body,
        b'1'..=b'9' => strip_text_length(body)?,
        0x00 => strip_binary_length(body)?,
        _ => return None,
    };
    top_level_sid(packet.strip_prefix(b"0")?)
}

fn acceptable(sid: &str) -> bool {
    !sid.is_empty() && sid.len() <= MAX_SID_LEN
}

/// The value of one `name=value` cookie pair if its name is `io` and the value is not empty, unquoted.
fn io_cookie_value(pair: &str) -> Option<&str> {
    let value = crate::cookie::pair_value(pair, "io")?;
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    (!value.is_empty()).then_some(value)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Strips an EIO=3 text payload's `<len>:` prefix.
fn strip_text_length(body: &[u8]) -> Option<&[u8]> {
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > MAX_LEN_DIGITS || body.get(digits) != Some(&b':') {
        return None;
    }
    body.get(digits + 1..)
}

/// Strips an EIO=3 binary payload's string marker, length digits and 0xFF separator.
fn strip_binary_length(body: &[u8]) -> Option<&[u8]> {
    let rest = body.strip_prefix(&[0x00])?;
    let digits = rest.iter().take_while(|&&b| b <= 9).count();
    if digits == 0 || digits > MAX_LEN_DIGITS || rest.get(digits) != Some(&0xFF) {
        return None;
    }
    rest.get(digits + 1..)
}

/// Finds the top-level `"sid"` key of the JSON object at the start of `json` and returns its string value.
fn top_level_sid(json: &[u8]) -> Option<&str> {
    let mut pos = skip_ws(json, 0);
    if *json.get(pos)? != b'{' {
        return None;
    }
    pos += 1;
    loop {
        pos = skip_ws(json, pos);
        let key = scan_string(json, pos)?;
        pos = skip_ws(json, key.end);
        if *json.get(pos)? != b':' {
            return None;
        }
        pos = skip_ws(json, pos + 1);
        if !key.escaped && key.text == b"sid" {
            return sid_value(json, pos);
        }
        pos = skip_ws(json, skip_value(json, pos)?);
        if *json.get(pos)? != b',' {
            return None;
        }
        pos += 1;
    }
}

/// The sid string starting at `pos`: unescaped, non-empty, at most MAX_SID_LEN bytes, UTF-8.
fn sid_value(json: &[u8], pos: usize) -> Option<&str> {
    let value = scan_string(json, pos)?;
    if value.escaped {
        return None;
    }
    std::str::from_utf8(value.text)
        .ok()
        .filter(|sid| acceptable(sid))
}

/// A JSON string's raw contents and the index just past its closing quote.
struct JsonStr<'a> {
    text: &'a [u8],
    escaped: bool,
    end: usize,
}

/// Scans the JSON string whose opening quote is at `pos`; None if there is none or it is unterminated.
fn scan_string(json: &[u8], pos: usize) -> Option<JsonStr<'_>> {
    if *json.get(pos)? != b'"' {
        return None;
    }
    let mut escaped = false;
    let mut i = pos + 1;
    loop {
        match *json.get(i)? {
            b'"' => {
                let text = json.get(pos + 1..i)?;
                return Some(JsonStr {
                    text,
                    escaped,
                    end: i + 1,
                });
            }
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
}

/// Index just past the JSON value starting at `pos`; None if it is cut off or empty.
fn skip_value(json: &[u8], pos: usize) -> Option<usize> {
    match *json.get(pos)? {
        b'"' => scan_string(json, pos).map(|s| s.end),
        b'{' | b'[' => skip_container(json, pos),
        _ => skip_scalar(json, pos),
    }
}

/// Skips a nested object or array without recursion, minding brackets inside strings.
fn skip_container(json: &[u8], pos: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = pos;
    loop {
        match *json.get(i)? {
            b'"' => {
                i = scan_string(json, i)?.end;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// Skips a number or literal; it must end before the input does, or it may be cut short.
fn skip_scalar(json: &[u8], pos: usize) -> Option<usize> {
    let len = json
        .get(pos..)?
        .iter()
        .position(|&b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())?;
    (len > 0).then_some(pos + len)
}

fn skip_ws(json: &[u8], pos: usize) -> usize {
    let ws = json.get(pos..).map_or(0, |rest| {
        rest.iter().take_while(|b| b.is_ascii_whitespace()).count()
    });
    pos + ws
}

#[cfg(test)]
mod tests;
