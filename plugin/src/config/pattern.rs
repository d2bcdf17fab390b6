//! Annotation patterns, matched exactly as containerd matches a runtime's `pod_annotations`
//! (Go's `path.Match`), so what we check is what containerd will pass through.

/// Kata reads this annotation before the stanza's `ConfigPath`: a pod that may set it chooses
/// the kata configuration (hypervisor, kernel, paths) it boots with.
pub const CONFIG_PATH_ANNOTATION: &str = "io.katacontainers.config_path";

/// Patterns longer than this are refused: nothing real needs them, and it bounds the matcher.
const MAX_PATTERN_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of characters other than `/`.
    Star,
    /// `?`: one character other than `/`.
    One,
    /// `[...]` / `[^...]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Literal(char),
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Star => c != '/',
            Token::One => c != '/',
            Token::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
            Token::Literal(l) => *l == c,
        }
    }

    /// Whether every character this token matches is also one that `*` or `?` may match.
    fn never_matches_slash(&self) -> bool {
        match self {
            Token::Star | Token::One => true,
            Token::Class { .. } => !self.matches('/'),
            Token::Literal(c) => *c != '/',
        }
    }
}

/// A checked pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationPattern {
    tokens: Vec<Token>,
}

impl AnnotationPattern {
    /// Parses `text` with `path.Match`'s syntax; a pattern containerd would silently never match
    /// (a bad class, a trailing `\`) is an error here instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing".into());
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(format!("longer than {MAX_PATTERN_LEN} characters"));
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                '*' => Token::Star,
                '?' => Token::One,
                '\\' => Token::Literal(chars.next().ok_or("ends with a lone '\\'")?),
                '[' => parse_class(&mut chars)?,
                c => Token::Literal(c),
            };
            // Consecutive stars match the same strings as one and would only slow matching.
            if !(token == Token::Star && tokens.last() == Some(&Token::Star)) {
                tokens.push(token);
            }
        }
        Ok(Self { tokens })
    }

    /// Whether containerd would pass through an annotation named `key` under this pattern.
    pub fn matches(&self, key: &str) -> bool {
        let key: Vec<char> = key.chars().collect();
        let tokens = &self.tokens;
        // reachable[j]: tokens[..i] can match key[..j]
        let mut reachable = vec![false; key.len() + 1];
        reachable[0] = true;
        for token in tokens {
            let mut next = vec![false; key.len() + 1];
            for j in 0..=key.len() {
                if !reachable[j] {
                    continue;
                }
                if *token == Token::Star {
                    next[j] = true;
                    let mut k = j;
                    while k < key.len() && key[k] != '/' {
                        k += 1;
                        next[k] = true;
                    }
                } else if j < key.len() && token.matches(key[j]) {
                    next[j + 1] = true;
                }
            }
            reachable = next;
        }
        reachable[key.len()]
    }

    /// Whether every annotation `narrower` matches is also matched by `self`. Conservative: it may
    /// answer no for an exotic pair that is in fact covered, never yes for one that is not.
    pub fn covers(&self, narrower: &AnnotationPattern) -> bool {
        let (a, p) = (&self.tokens, &narrower.tokens);
        // covered[i][j]: a[i..] covers p[j..]
        let mut covered = vec![vec![false; p.len() + 1]; a.len() + 1];
        covered[a.len()][p.len()] = true;
        for i in (0..a.len()).rev() {
            for j in (0..=p.len()).rev() {
                covered[i][j] = match &a[i] {
                    Token::Star => {
                        covered[i + 1][j]
                            || (j < p.len() && p[j].never_matches_slash() && covered[i][j + 1])
                    }
                    Token::One => {
                        j < p.len()
                            && p[j] != Token::Star
                            && p[j].never_matches_slash()
                            && covered[i + 1][j + 1]
                    }
                    class @ Token::Class { .. } => {
                        j < p.len()
                            && (p[j] == *class
                                || matches!(p[j], Token::Literal(c) if class.matches(c)))
                            && covered[i + 1][j + 1]
                    }
                    Token::Literal(c) => {
                        j < p.len() && p[j] == Token::Literal(*c) && covered[i + 1][j + 1]
                    }
                };
            }
        }
        covered[0][0]
    }
}

fn parse_class(chars: &mut std::str::Chars<'_>) -> Result<Token, String> {
    const UNCLOSED: &str = "has a '[' without its ']'";
    let mut ranges = Vec::new();
    let mut lookahead = chars.clone();
    let negated = lookahead.next() == Some('^');
    if negated {
        *chars = lookahead;
    }
    loop {
        let mut c = chars.next().ok_or(UNCLOSED)?;
        // As in Go, ']' closes the class only once it holds something.
        if c == ']' && !ranges.is_empty() {
            break;
        }
        if c == '\\' {
            c = chars.next().ok_or(UNCLOSED)?;
        } else if c == '-' || c == ']' {
            return Err(format!(
                "has a '{c}' where a character is expected in [...]"
            ));
        }
        let mut lookahead = chars.clone();
        if lookahead.next() == Some('-') {
            let mut hi = lookahead.next().ok_or(UNCLOSED)?;
            if hi == '\\' {
                hi = lookahead.next().ok_or(UNCLOSED)?;
            } else if hi == ']' || hi == '-' {
                return Err("has a range in [...] without its upper end".into());
            }
            if hi < c {
                return Err(format!("has the empty range {c}-{hi} in [...]"));
            }
            *chars = lookahead;
            ranges.push((c, hi));
        } else {
            ranges.push((c, c));
        }
    }
    Ok(Token::Class { negated, ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> AnnotationPattern {
        AnnotationPattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn matches_like_go_path_match() {
        let cases = [
            ("io.katacontainers.*", "io.katacontainers.config_path", true),
            ("*", "io.katacontainers.config_path", true),
            (
                "io.katacontainers.config.*",
                "io.katacontainers.config_path",
                false,
            ),
            (
                "io.katacontainers.config?path",
                "io.katacontainers.config_path",
                true,
            ),
            (
                "io.katacontainers.config[_.]path",
                "io.katacontainers.config_path",
                true,
            ),
            (
                "io.katacontainers.config[^_]path",
                "io.katacontainers.config_path",
                false,
            ),
            ("io.kata*", "io.kata/x", false),
            ("a/*", "a/b", true),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("exact.key", "exact.key", true),
            ("exact.key", "exact.keys", false),
        ];
        for (p, key, want) in cases {
            assert_eq!(pattern(p).matches(key), want, "{p} vs {key}");
        }
    }

    #[test]
    fn refuses_patterns_containerd_would_never_match() {
        for bad in ["", "a[", "a\\", "[]", "[^]", "[a-]", "[z-a]", "[-a]", "a[^"] {
            assert!(AnnotationPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn coverage_is_subset_of_matched_keys() {
        let yes = [
            (
                "io.katacontainers.config.hypervisor.*",
                "io.katacontainers.config.hypervisor.*",
            ),
            (
                "io.katacontainers.config.hypervisor.*",
                "io.katacontainers.config.hypervisor.default_memory",
            ),
            (
                "io.katacontainers.*",
                "io.katacontainers.config.hypervisor.*",
            ),
            ("*", "anything?"),
            ("a?c", "abc"),
            ("a[bc]d", "abd"),
            ("a*b*", "a*b*c"),
        ];
        for (wide, narrow) in yes {
            assert!(pattern(wide).covers(&pattern(narrow)), "{wide} ⊇ {narrow}");
        }
        let no = [
            (
                "io.katacontainers.config.hypervisor.*",
                "io.katacontainers.config.agent.*",
            ),
            (
                "io.katacontainers.config.hypervisor.*",
                "io.katacontainers.*",
            ),
            (
                "io.katacontainers.config.*",
                "io.katacontainers.config_path",
            ),
            ("a*", "a/b"),
            ("a?", "a*"),
            ("abc", "ab?"),
            ("*", "[^a]"),
        ];
        for (wide, narrow) in no {
            assert!(
                !pattern(wide).covers(&pattern(narrow)),
                "{wide} !⊇ {narrow}"
            );
        }
    }
}
