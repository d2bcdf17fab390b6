//! `WWW-Authenticate` challenges (RFC 7235) as registries send them with a 401: `Bearer
//! realm="…",service="…",scope="…"` for a token service, `Basic realm="…"` for htpasswd, and
//! `error="insufficient_scope"` when a token was accepted but grants too little.

use std::collections::BTreeMap;

/// One challenge: its scheme (lowercase) and its parameters (keys lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// The challenge of a response, if it has a readable one.
    pub fn of(response: &reqwest::Response) -> Option<Self> {
        let header = response.headers().get(reqwest::header::WWW_AUTHENTICATE)?;
        parse(header.to_str().ok()?)
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// The registry accepted the token but it does not grant what was asked for.
    pub fn insufficient_scope(&self) -> bool {
        self.param("error") == Some("insufficient_scope")
    }
}

/// Parses the first challenge of a header value. Registries send one; a second scheme after
/// the first one's parameters is ignored.
pub(crate) fn parse(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            // `Basic realm="x", Bearer realm="y"`: the second scheme starts here.
            break;
        }
        let after = after.trim_start();
        let (value, remaining) = match after.strip_prefix('"') {
            Some(quoted) => quoted_string(quoted)?,
            None => match after.find(',') {
                Some(end) => (after[..end].trim().to_owned(), &after[end..]),
                None => (after.trim().to_owned(), ""),
            },
        };
        params.insert(key.to_ascii_lowercase(), value);
        rest = remaining;
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// The value of a quoted string (the opening quote already consumed) and what follows it.
fn quoted_string(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => value.push(chars.next()?.1),
            '"' => return Some((value, &text[i + 1..])),
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distribution_challenges() {
        let challenge = parse(
            r#"Bearer realm="http://127.0.0.1:5001/token",service="knm-registry",scope="repository:kata/artifacts:pull",error="insufficient_scope""#,
        )
        .expect("challenge");
        assert_eq!(challenge.scheme, "bearer");
        assert_eq!(
            challenge.param("realm"),
            Some("http://127.0.0.1:5001/token")
        );
        assert_eq!(challenge.param("service"), Some("knm-registry"));
        assert_eq!(
            challenge.param("scope"),
            Some("repository:kata/artifacts:pull")
        );
        assert!(challenge.insufficient_scope());

        let basic = parse(r#"Basic realm="knm-test""#).expect("basic");
        assert_eq!(basic.scheme, "basic");
        assert!(!basic.insufficient_scope());
    }

    #[test]
    fn tolerates_spacing_tokens_and_escapes() {
        let challenge =
            parse(r#"bearer  realm = "https://a/t?x=1" , service=reg, note="say \"hi\", ok""#)
                .expect("challenge");
        assert_eq!(challenge.param("realm"), Some("https://a/t?x=1"));
        assert_eq!(challenge.param("service"), Some("reg"));
        assert_eq!(challenge.param("note"), Some(r#"say "hi", ok"#));
        assert_eq!(parse("Negotiate").expect("bare").scheme, "negotiate");
        assert_eq!(parse(""), None);
        assert_eq!(parse(r#"Bearer realm="unterminated"#), None);
        let two = parse(r#"Basic realm="x", Bearer realm="y""#).expect("two");
        assert_eq!(two.scheme, "basic");
        assert_eq!(two.param("realm"), Some("x"));
    }
}
