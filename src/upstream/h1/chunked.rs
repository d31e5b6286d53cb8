//! The chunked transfer coding of a response body (RFC 9112 §7.1), decoded from a read buffer.

use bytes::{Buf, Bytes, BytesMut};

/// A size line (with its extensions) or a trailer section longer than this is refused.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Where a decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one (trailers are dropped), `seen` bytes so far.
    Trailers {
        seen: usize,
    },
    Done,
}

/// What one decoding step came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer ends inside a size line, a chunk's end or the trailers: read more.
    More,
    End,
}

/// A chunked body's decoder.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { state: State::Size }
    }
}

impl Chunked {
    /// Decodes from the front of `buf`, taking what it uses: the next data, or what it needs next.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        loop {
            match self.state {
                State::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            State::Trailers { seen: 0 }
                        } else {
                            State::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_LINE => return Ok(Step::More),
                    _ => return Err("invalid chunk size line"),
                },
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let rest = left - take as u64;
                    self.state = if rest == 0 {
                        State::DataEnd
                    } else {
                        State::Data(rest)
                    };
                    return Ok(Step::Data(buf.split_to(take).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers { seen } => {
                    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                        if seen + buf.len() > MAX_TRAILERS {
                            return Err("trailer section too large");
                        }
                        return Ok(Step::More);
                    };
                    let line = buf.split_to(end + 1);
                    let seen = seen + line.len();
                    if seen > MAX_TRAILERS {
                        return Err("trailer section too large");
                    }
                    self.state = if line.as_ref() == b"\r\n" || line.as_ref() == b"\n" {
                        State::Done
                    } else {
                        State::Trailers { seen }
                    };
                }
                State::Done => return Ok(Step::End),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes: the data, or the first error.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, bool), &'static str> {
        let mut dec = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match dec.step(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::End => return Ok((out, true)),
                Step::More if fed >= input.len() => return Ok((out, false)),
                Step::More => {
                    let end = (fed + piece).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_in_any_pieces() {
        let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, 100] {
            let (data, done) = decode(body, piece).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
            assert!(done);
        }
    }

    #[test]
    fn refuses_what_is_not_chunked() {
        assert!(decode(b"zz\r\nhello\r\n0\r\n\r\n", 100).is_err());
        assert!(decode(b"5\r\nhelloXX0\r\n\r\n", 100).is_err());
        assert!(decode(b"ffffffffffffffffff\r\n", 100).is_err());
        let long = [b"1;".as_slice(), &[b'a'; 5000]].concat();
        assert!(decode(&long, 100).is_err());
    }

    #[test]
    fn a_truncated_body_is_not_done() {
        let (data, done) = decode(b"5\r\nhel", 100).unwrap();
        assert_eq!(data, b"hel");
        assert!(!done);
    }
}
