//! The Engine.IO handshake parser: a sid it returns is non-empty, bounded and really in the body.
use limpet::engineio::{handshake_sid, MAX_SID_LEN};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Some(sid) = handshake_sid(data) {
            assert!(!sid.is_empty() && sid.len() <= MAX_SID_LEN, "{sid:?}");
            assert!(data.windows(sid.len()).any(|w| w == sid.as_bytes()));
        }
    });
}
