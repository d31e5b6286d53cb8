//! TOML text → raw types, reporting every structural problem (syntax, unknown keys, wrong types) with its key path.
//!
//! serde stops at the first error, so each failed pass records the problem, removes the offending key from the
//! parsed document and tries again: a file with three misspelt keys gets three messages, not one at a time.

use serde_path_to_error::Segment;
use toml::Value;

use super::raw::RawConfig;
use super::Problem;

/// A bound on passes, so a pathological file cannot loop for long.
const MAX_STRUCTURAL_PROBLEMS: usize = 100;

/// The raw config, plus the problems found on the way and the key paths removed to get past them.
pub(super) struct Parsed {
    pub raw: Option<RawConfig>,
    pub problems: Vec<Problem>,
    pub removed: Vec<String>,
}

/// Parses `text`; a syntax error ends parsing at once (with its line and column).
pub(super) fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed {
        raw: None,
        problems: Vec::new(),
        removed: Vec::new(),
    };
    let mut doc = match text.parse::<toml::Table>() {
        Ok(table) => Value::Table(table),
        Err(e) => {
            parsed.problems.push(syntax_problem(text, &e));
            return parsed;
        }
    };
    while parsed.problems.len() < MAX_STRUCTURAL_PROBLEMS {
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(doc.clone()) {
            Ok(raw) => {
                parsed.raw = Some(raw);
                break;
            }
            Err(err) => err,
        };
        let segments: Vec<Segment> = err.path().iter().cloned().collect();
        let path = display_path(&segments);
        parsed.problems.push(Problem {
            path,
            message: friendly(err.into_inner().message()),
        });
        match remove(&mut doc, &segments) {
            Some(removed) => parsed.removed.push(display_path(&removed)),
            None => break,
        }
    }
    parsed
}

/// Is a problem about a key that was removed (or something inside it)?
pub(super) fn under_removed(path: &str, removed: &[String]) -> bool {
    removed.iter().any(|r| {
        path.strip_prefix(r.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    })
}

fn syntax_problem(text: &str, e: &toml::de::Error) -> Problem {
    let message = e.message().trim().lines().collect::<Vec<_>>().join("; ");
    let message = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    };
    Problem {
        path: String::new(),
        message,
    }
}

/// `server[0].location[1].proxy_pass`, as the validator writes paths.
fn display_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// Removes the value at `segments` (the whole array, when it is an array element, so later indices keep their
/// meaning). Returns the path actually removed, or None when there is nothing to remove.
fn remove(doc: &mut Value, segments: &[Segment]) -> Option<Vec<Segment>> {
    let mut end = segments.len();
    while end > 0 && !matches!(segments[end - 1], Segment::Map { .. }) {
        end -= 1;
    }
    let (Segment::Map { key }, parents) = segments[..end].split_last()? else {
        return None;
    };
    let mut node = doc;
    for s in parents {
        node = match (s, node) {
            (Segment::Map { key }, Value::Table(t)) => t.get_mut(key)?,
            (Segment::Seq { index }, Value::Array(a)) => a.get_mut(*index)?,
            _ => return None,
        };
    }
    match node {
        Value::Table(t) => t.remove(key).map(|_| segments[..end].to_vec()),
        _ => None,
    }
}

/// Rewrites serde's wording in the config's terms: keys and tables, integers and arrays.
fn friendly(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return unknown_key(rest);
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((got, want)) = rest.split_once(", expected ") {
            return format!("expected {}, got {}", type_name(want), type_name(got));
        }
    }
    message.to_string()
}

/// From "`wieght`, expected one of `addr`, `weight`" (or "…, expected `global`", "…, there are no fields").
fn unknown_key(rest: &str) -> String {
    let (name, expected) = rest.split_once(", ").unwrap_or((rest, ""));
    let name = name.trim_matches('`');
    let known: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    if known.is_empty() {
        return "unknown key (this table takes no keys)".to_string();
    }
    match known.iter().find(|k| close(name, k)) {
        Some(k) => format!("unknown key (did you mean `{k}`?)"),
        None => format!("unknown key (valid here: {})", known.join(", ")),
    }
}

/// Are two key names one or two edits apart (a typo)?
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()] <= 2.min(a.len().max(b.len()) / 2)
}

/// serde's names for types, as a TOML author knows them.
fn type_name(serde_name: &str) -> String {
    let t = serde_name.trim();
    let named = match t {
        "i64" | "u64" | "i32" | "u32" | "usize" => "an integer",
        "map" => "a table",
        "sequence" | "a sequence" => "an array",
        "boolean" => "a boolean",
        _ if t.starts_with("struct ") => "a table",
        _ => return t.to_string(),
    };
    named.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(text).problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn every_unknown_key_is_reported_with_a_suggestion() {
        let got = problems(
            "[globl]\n[upstream.a]\nbalanse = \"x\"\n[[upstream.a.server]]\naddr = \"1.2.3.4:1\"\nwieght = 2\n",
        );
        assert_eq!(
            got,
            [
                "globl: unknown key (did you mean `global`?)",
                "upstream.a.balanse: unknown key (did you mean `balance`?)",
                "upstream.a.server[0].wieght: unknown key (did you mean `weight`?)",
            ]
        );
    }

    #[test]
    fn unrelated_keys_list_the_valid_ones() {
        let got = problems("[admin]\nport = 1\n");
        assert_eq!(
            got,
            ["admin.port: unknown key (valid here: listen, token_file)"]
        );
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let got = problems("[[upstream.a.server]]\nweight = \"2\"\n");
        assert_eq!(
            got,
            ["upstream.a.server[0].weight: expected an integer, got string \"2\""]
        );
        let got = problems("[[server]]\nlisten = [1]\n");
        assert_eq!(
            got,
            ["server[0].listen[0]: expected a string, got integer `1`"]
        );
    }

    #[test]
    fn a_syntax_error_has_a_line_and_column() {
        let got = problems("[global]\nworkers = 1\n[[server]\n");
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("line 3, column "), "{got:?}");
    }

    #[test]
    fn removed_paths_cover_what_is_inside() {
        let removed = vec!["server[0].listen".to_string()];
        assert!(under_removed("server[0].listen", &removed));
        assert!(under_removed("server[0].listen[1]", &removed));
        assert!(!under_removed("server[0].listener", &removed));
        assert!(!under_removed("server[1].listen", &removed));
    }
}
