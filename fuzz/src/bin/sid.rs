//! sid and cookie extraction from query strings, Cookie and Set-Cookie values, and percent-decoding.
use limpet::sticky::engineio::{
    cookie_sid, decode_sid, is_handshake, query_param, query_sid, set_cookie_sid, MAX_SID_LEN,
};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        for sid in [query_sid(text), cookie_sid(text), set_cookie_sid(text)]
            .into_iter()
            .flatten()
        {
            assert!(!sid.is_empty() && sid.len() <= MAX_SID_LEN, "{sid:?}");
            assert!(text.contains(sid));
            if let Some(decoded) = decode_sid(sid) {
                assert!(decoded.len() <= sid.len());
            }
        }
        let _ = is_handshake(text);
        let _ = query_param(text, "EIO");
        let _ = decode_sid(text);
    });
}
