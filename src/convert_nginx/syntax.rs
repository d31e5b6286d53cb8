//! nginx config syntax: directives and blocks with their line numbers, no meaning attached.

use std::fmt;
use std::iter::Peekable;
use std::str::Chars;

use super::ConvertError;

/// `name args… ;` or `name args… { … }`.
#[derive(Debug)]
pub(super) struct Directive {
    pub(super) name: String,
    pub(super) args: Vec<String>,
    pub(super) line: usize,
    pub(super) block: Option<Vec<Directive>>,
}

/// The directives of a whole file.
pub(super) fn parse(src: &str) -> Result<Vec<Directive>, ConvertError> {
    let tokens = Lexer::new(src).run()?;
    parse_block(&mut tokens.into_iter(), None)
}

fn error(line: usize, message: impl Into<String>) -> ConvertError {
    ConvertError::Syntax {
        line,
        message: message.into(),
    }
}

const UNTERMINATED: &str = "unterminated quoted string";

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
}

/// Splits text into words, `;`, `{`, `}` with their line numbers; `#` comments dropped, quotes resolved.
struct Lexer<'a> {
    chars: Peekable<Chars<'a>>,
    line: usize,
    out: Vec<(Tok, usize)>,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer {
            chars: src.chars().peekable(),
            line: 1,
            out: Vec::new(),
        }
    }

    fn run(mut self) -> Result<Vec<(Tok, usize)>, ConvertError> {
        while let Some(c) = self.chars.next() {
            match c {
                '\n' => self.line += 1,
                c if c.is_whitespace() => {}
                '#' => while self.chars.next_if(|&c| c != '\n').is_some() {},
                ';' => self.push(Tok::Semi),
                '{' => self.push(Tok::Open),
                '}' => self.push(Tok::Close),
                '"' | '\'' => self.quoted(c)?,
                c => self.bare(c),
            }
        }
        Ok(self.out)
    }

    fn push(&mut self, tok: Tok) {
        self.out.push((tok, self.line));
    }

    /// A word in `quote`s, which may span lines and must end where a word can end.
    fn quoted(&mut self, quote: char) -> Result<(), ConvertError> {
        let start = self.line;
        let mut word = String::new();
        loop {
            match self.chars.next() {
                None => return Err(error(start, UNTERMINATED)),
                Some(q) if q == quote => break,
                Some('\\') => {
                    let escaped = self
                        .chars
                        .next()
                        .ok_or_else(|| error(start, UNTERMINATED))?;
                    push_escaped(&mut word, escaped);
                }
                Some(ch) => {
                    self.line += usize::from(ch == '\n');
                    word.push(ch);
                }
            }
        }
        let glued = |n: &char| !n.is_whitespace() && !";{}".contains(*n);
        if self.chars.peek().is_some_and(glued) {
            return Err(error(self.line, "unexpected character after quoted string"));
        }
        self.out.push((Tok::Word(word), start));
        Ok(())
    }

    /// An unquoted word; a `{` ends it and opens a block unless it starts a `${variable}`.
    fn bare(&mut self, first: char) {
        let mut word = String::from(first);
        while let Some(ch) = self
            .chars
            .next_if(|&n| !n.is_whitespace() && !";}".contains(n))
        {
            if ch == '{' && !word.ends_with('$') {
                self.push(Tok::Word(word));
                return self.push(Tok::Open);
            }
            word.push(ch);
            if ch == '{' {
                self.variable_name(&mut word);
            }
        }
        self.push(Tok::Word(word));
    }

    /// The rest of a `${variable}` up to its `}` (or the end of the line).
    fn variable_name(&mut self, word: &mut String) {
        while let Some(v) = self.chars.next_if(|&n| n != '\n') {
            word.push(v);
            if v == '}' {
                break;
            }
        }
    }
}

/// The character a backslash escape stands for inside quotes; unknown escapes stay as written.
fn push_escaped(word: &mut String, c: char) {
    match c {
        'n' => word.push('\n'),
        't' => word.push('\t'),
        'r' => word.push('\r'),
        '"' | '\'' | '\\' => word.push(c),
        c => word.extend(['\\', c]),
    }
}

/// The directives up to the `}` closing the block opened at line `opened_at`, or to the end of the file.
fn parse_block(
    tokens: &mut impl Iterator<Item = (Tok, usize)>,
    opened_at: Option<usize>,
) -> Result<Vec<Directive>, ConvertError> {
    let mut out = Vec::new();
    loop {
        let (name, line) = match tokens.next() {
            None => match opened_at {
                Some(l) => return Err(error(l, "block opened here is never closed")),
                None => return Ok(out),
            },
            Some((Tok::Close, l)) => match opened_at {
                Some(_) => return Ok(out),
                None => return Err(error(l, "unexpected \"}\"")),
            },
            Some((Tok::Semi, l)) => return Err(error(l, "unexpected \";\"")),
            Some((Tok::Open, l)) => return Err(error(l, "block without a directive name")),
            Some((Tok::Word(w), l)) => (w, l),
        };
        let (args, block) = directive_rest(tokens, &name, line)?;
        out.push(Directive {
            name,
            args,
            line,
            block,
        });
    }
}

/// A directive's arguments and, if it has one, its block.
fn directive_rest(
    tokens: &mut impl Iterator<Item = (Tok, usize)>,
    name: &str,
    line: usize,
) -> Result<(Vec<String>, Option<Vec<Directive>>), ConvertError> {
    let mut args = Vec::new();
    loop {
        match tokens.next() {
            Some((Tok::Word(w), _)) => args.push(w),
            Some((Tok::Semi, _)) => return Ok((args, None)),
            Some((Tok::Open, l)) => return Ok((args, Some(parse_block(tokens, Some(l))?))),
            _ => {
                let message = format!("directive \"{name}\" is not terminated by \";\"");
                return Err(error(line, message));
            }
        }
    }
}

/// The directive as written (a block as `{ … }`), for notes.
impl fmt::Display for Directive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for a in &self.args {
            let plain =
                !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || "\"';{}#".contains(c));
            match plain {
                true => write!(f, " {a}")?,
                false => write!(f, " {a:?}")?,
            }
        }
        if self.block.is_some() {
            f.write_str(" { … }")?;
        }
        Ok(())
    }
}
