//! The config loader: TOML text in, a config or a list of problems out, never a panic.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = limpet::parse_config(text);
        }
    });
}
