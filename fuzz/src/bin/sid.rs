//! sid and cookie extraction from query strings, Cookie and Set-Cookie values, and percent-decoding: a raw sid
//! is a non-empty part of its input; a decoded one is non-empty and bounded.
use limpet::engineio::{
    cookie_sid, decode_sid, is_handshake, query_param, query_sid, set_cookie_sid, MAX_SID_LEN,
};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        for raw in [query_sid(text), cookie_sid(text), set_cookie_sid(text)]
            .into_iter()
            .flatten()
        {
            assert!(!raw.is_empty() && text.contains(raw), "{raw:?}");
            if let Some(sid) = decode_sid(raw) {
                assert!(!sid.is_empty() && sid.len() <= MAX_SID_LEN, "{sid:?}");
            }
        }
        let _ = is_handshake(text);
        let _ = query_param(text, "EIO");
        let _ = decode_sid(text);
    });
}
