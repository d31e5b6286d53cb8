//! Reading cookies: the one scanner of `Cookie` header values.

use http::header::{HeaderMap, COOKIE};

/// The value of cookie `name` in a `Cookie` header value (`a=1; io=xyz`), trimmed, as written (quotes kept);
/// the first pair of that name wins. Names match exactly.
pub fn value<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header
        .split(';')
        .find_map(|pair| pair_value(pair, name))
}

/// The value of the `name=value` pair `pair` when its name is `name`, trimmed.
pub fn pair_value<'a>(pair: &'a str, name: &str) -> Option<&'a str> {
    let (key, value) = pair.split_once('=')?;
    (key.trim() == name).then(|| value.trim())
}

/// The value of cookie `name` across a request's `Cookie` headers.
pub fn in_headers<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    find_in_headers(headers, |v| value(v, name))
}

/// The first thing `find` reads from a request's `Cookie` header values, in order.
pub fn find_in_headers<'a>(
    headers: &'a HeaderMap,
    find: impl FnMut(&'a str) -> Option<&'a str>,
) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(find)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cookie_among_others() {
        assert_eq!(value("a=1; io=xyz; b=2", "io"), Some("xyz"));
        assert_eq!(value("a=1;io= xyz ", "io"), Some("xyz"));
        assert_eq!(value("a=1; b=2", "io"), None);
        assert_eq!(value("io=; io=late", "io"), Some(""));
        assert_eq!(value("IO=x", "io"), None);
        assert_eq!(value("user=\"q\"", "user"), Some("\"q\""));
    }

    #[test]
    fn reads_every_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1".parse().unwrap());
        h.append(COOKIE, "user=42".parse().unwrap());
        assert_eq!(in_headers(&h, "user"), Some("42"));
        assert_eq!(in_headers(&h, "none"), None);
    }
}
