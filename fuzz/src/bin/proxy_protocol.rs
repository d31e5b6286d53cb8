//! The PROXY protocol v1/v2 parser: a header it accepts took at most the bytes it was given.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(Some((_, used))) = limpet::proxy_protocol::parse(data) {
            assert!(
                used > 0 && used <= data.len(),
                "used {used} of {}",
                data.len()
            );
        }
    });
}
