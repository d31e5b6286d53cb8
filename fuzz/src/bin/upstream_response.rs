//! The upstream response reader: any bytes parse to a head or an error without a panic, and a chunked body
//! decodes to the same bytes, the same end and the same error however it is split.
use bytes::BytesMut;
use limpet::h1::chunked::{Chunked, Step};
use limpet::h1::head::{keeps_alive, parse_response, response_framing, BodyFraming};

/// Feeds `input` in two pieces split at `split`: the data decoded, whether it ended, or the error.
fn decode(input: &[u8], split: usize) -> Result<(Vec<u8>, bool), &'static str> {
    let mut dec = Chunked::default();
    let mut buf = BytesMut::from(&input[..split]);
    let mut rest = Some(&input[split..]);
    let mut out = Vec::new();
    loop {
        match dec.step(&mut buf)? {
            Step::Data(d) => out.extend_from_slice(&d),
            Step::End => return Ok((out, true)),
            Step::More => match rest.take() {
                Some(more) => buf.extend_from_slice(more),
                None => return Ok((out, false)),
            },
        }
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut buf = BytesMut::from(data);
        let Ok(Some(head)) = parse_response(&mut buf) else {
            return;
        };
        let Ok(framing) = response_framing(&http::Method::GET, &head) else {
            return;
        };
        let _ = keeps_alive(&head, framing);
        if framing == BodyFraming::Chunked {
            let split = data.first().map_or(0, |b| *b as usize) % (buf.len() + 1);
            assert_eq!(decode(&buf, buf.len()), decode(&buf, split));
        }
    });
}
