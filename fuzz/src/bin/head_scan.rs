//! The raw request-head scanner: feeding bytes in any split gives the counts of feeding them whole.
use limpet::HeadScan;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let split = data.first().map_or(0, |b| *b as usize) % (data.len() + 1);
        let mut whole = HeadScan::default();
        let once = whole.feed(data);
        let mut parts = HeadScan::default();
        let twice = parts
            .feed(&data[..split])
            .or_else(|| parts.feed(&data[split..]));
        assert_eq!(once, twice);
    });
}
