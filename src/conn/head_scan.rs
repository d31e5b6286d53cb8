//! Counting the framing lines of a request head on its raw bytes, as they arrive.

/// How many `Content-Length` and `Transfer-Encoding` lines a request head carried, counted on its raw bytes:
/// hyper merges repeated `Content-Length` lines and drops one beside `Transfer-Encoding` before limpet sees the
/// request. The connection hands it to the request's service when it saw the whole head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadCounts {
    pub content_length: u8,
    pub transfer_encoding: u8,
    /// A `Transfer-Encoding` value ended in whitespace (`chunked `), which hyper trims.
    pub padded_coding: bool,
}

/// Longest header-name prefix [`HeadScan`] compares: `transfer-encoding:`.
const SCAN_PREFIX: usize = 18;

/// Counts the framing header lines of one request head as its bytes arrive, up to the blank line ending it.
/// No allocation; line ends found with `memchr`, over heads only.
#[derive(Debug, Default)]
pub struct HeadScan {
    counts: HeadCounts,
    line: [u8; SCAN_PREFIX],
    len: usize,
    lines: usize,
    /// The last two bytes of the current line.
    tail: [u8; 2],
}

impl HeadScan {
    /// Feeds the next bytes of the head; the counts once its blank line has passed (bytes after it are not
    /// looked at).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Option<HeadCounts> {
        while !bytes.is_empty() {
            let end = memchr::memchr(b'\n', bytes);
            let part = &bytes[..end.unwrap_or(bytes.len())];
            self.extend_line(part);
            let end = end?;
            bytes = &bytes[end + 1..];
            if self.end_line() {
                return Some(self.counts);
            }
        }
        None
    }

    /// Adds bytes of the current line: its first `SCAN_PREFIX` lowercased, and its last two.
    fn extend_line(&mut self, part: &[u8]) {
        let start = self.len.min(SCAN_PREFIX);
        for (slot, b) in self.line[start..].iter_mut().zip(part) {
            *slot = b.to_ascii_lowercase();
        }
        self.len = self.len.saturating_add(part.len());
        self.tail = match *part {
            [] => self.tail,
            [b] => [self.tail[1], b],
            [.., a, b] => [a, b],
        };
    }

    /// Counts the line just ended; true when it was the blank line ending the head.
    fn end_line(&mut self) -> bool {
        let blank = self.len == 0 || (self.len == 1 && self.line[0] == b'\r');
        if blank && self.lines > 0 {
            return true;
        }
        if !blank {
            let line = &self.line[..self.len.min(SCAN_PREFIX)];
            let c = &mut self.counts;
            if line.starts_with(b"content-length:") {
                c.content_length = c.content_length.saturating_add(1);
            } else if line.starts_with(b"transfer-encoding:") {
                c.transfer_encoding = c.transfer_encoding.saturating_add(1);
                let end = if self.tail[1] == b'\r' {
                    self.tail[0]
                } else {
                    self.tail[1]
                };
                c.padded_coding |= matches!(end, b' ' | b'\t');
            }
            self.lines += 1;
        }
        self.len = 0;
        self.tail = [0; 2];
        false
    }
}
