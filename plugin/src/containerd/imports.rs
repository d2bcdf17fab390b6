//! The main file's top-level `imports` list: whether it already pulls our drop-in in (by path or
//! by a glob such as `/etc/containerd/conf.d/*.toml`), and the splices that add or remove our
//! entry while every other byte of the list stays as written.

use std::ops::Range;
use std::path::Path;

use toml_edit::{Array, Value};

use super::layout::{indent_at, line_end, line_start};
use super::splice::Splice;

/// Whether an `imports` entry names `target`. containerd resolves a relative entry against the
/// main file's directory and expands globs with Go's `filepath.Glob`.
pub(crate) fn entry_covers(entry: &str, config_dir: &Path, target: &Path) -> bool {
    let entry = config_dir.join(entry);
    let (Some(pattern), Some(target)) = (entry.to_str(), target.to_str()) else {
        return false;
    };
    glob_match(pattern.as_bytes(), target.as_bytes())
}

/// Go's `filepath.Match` on `/`-separated paths: `*` and `?` stop at `/`, `[…]` and `[^…]`
/// classes with ranges, `\` escapes the next byte.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len())
            .take_while(|&skip| !name[..skip].contains(&b'/'))
            .any(|skip| glob_match(rest, &name[skip..])),
        Some((b'?', rest)) => {
            matches!(name.split_first(), Some((c, tail)) if *c != b'/' && glob_match(rest, tail))
        }
        Some((b'[', rest)) => match (name.split_first(), class_match(rest)) {
            (Some((c, tail)), Some((matcher, after))) if *c != b'/' && matcher(*c) => {
                glob_match(after, tail)
            }
            _ => false,
        },
        Some((b'\\', rest)) if !rest.is_empty() => {
            matches!(name.split_first(), Some((c, tail)) if *c == rest[0] && glob_match(&rest[1..], tail))
        }
        Some((p, rest)) => {
            matches!(name.split_first(), Some((c, tail)) if c == p && glob_match(rest, tail))
        }
    }
}

/// Parses a class after `[`: a predicate and the pattern after `]` (None when unterminated).
fn class_match(class: &[u8]) -> Option<(impl Fn(u8) -> bool, &[u8])> {
    let (negated, body) = match class.first() {
        Some(b'^') => (true, &class[1..]),
        _ => (false, class),
    };
    let close = body.iter().position(|b| *b == b']')?;
    let items = body[..close].to_vec();
    let matcher = move |c: u8| {
        let mut i = 0;
        let mut hit = false;
        while i < items.len() {
            let lo = items[i];
            if i + 2 < items.len() && items[i + 1] == b'-' {
                hit |= lo <= c && c <= items[i + 2];
                i += 3;
            } else {
                hit |= lo == c;
                i += 1;
            }
        }
        hit != negated
    };
    Some((matcher, &body[close + 1..]))
}

/// The string entries of the list with their spans.
fn entries(array: &Array) -> Vec<(Option<&str>, Range<usize>)> {
    array
        .iter()
        .filter_map(|value| Some((value.as_str(), value.span()?)))
        .collect()
}

/// Whether the list holds `entry` verbatim.
pub(crate) fn contains(array: &Array, entry: &str) -> bool {
    array.iter().any(|value| value.as_str() == Some(entry))
}

/// Adds `entry` after the last element (on its own line when the list has one element a line),
/// or inside `[]` when the list is empty. Last, so that our drop-in is merged after the
/// operator's: containerd gives the later file the last word.
pub(crate) fn add(text: &str, array: &Array, entry: &str, eol: &str) -> Option<Splice> {
    let quoted = Value::from(entry).to_string();
    let open = array.span()?.start;
    let elements = entries(array);
    let Some((_, last)) = elements.last() else {
        return Some(Splice::insert(open + 1, quoted));
    };
    let before_last = elements
        .len()
        .checked_sub(2)
        .map_or(open, |i| elements[i].1.end);
    if text[before_last..last.start].contains('\n') {
        let indent = indent_at(text, last.start);
        Some(Splice::insert(last.end, format!(",{eol}{indent}{quoted}")))
    } else {
        Some(Splice::insert(last.end, format!(", {quoted}")))
    }
}

/// Removes `entry` and the separator that joined it to its neighbours.
pub(crate) fn remove(text: &str, array: &Array, entry: &str) -> Option<Splice> {
    let elements = entries(array);
    let index = elements
        .iter()
        .position(|(value, _)| *value == Some(entry))?;
    let (_, own) = &elements[index];
    let range = if index > 0 {
        elements[index - 1].1.end..own.end
    } else if let Some((_, next)) = elements.get(1) {
        own.start..next.start
    } else {
        // The only element: take a trailing comma with it, so that `["x",]` becomes `[]`.
        let after = &text[own.end..];
        let ws = after.len() - after.trim_start().len();
        let comma = usize::from(after.trim_start().starts_with(','));
        own.start..own.end + if comma == 1 { ws + 1 } else { 0 }
    };
    Some(Splice::remove(range))
}

/// Removes the whole `imports = […]` line (when we created it and it is left empty).
pub(crate) fn remove_key_line(text: &str, key_start: usize, value: Range<usize>) -> Splice {
    Splice::remove(line_start(text, key_start)..line_end(text, value.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str, splice: &Splice) -> String {
        super::super::splice::apply(text, vec![splice.clone()]).unwrap()
    }

    fn imports(text: &str) -> (toml_edit::Document<&str>, &str) {
        (toml_edit::Document::parse(text).unwrap(), text)
    }

    fn round_trip(text: &str, expected_added: &str) {
        let (doc, text) = imports(text);
        let array = doc.as_table()["imports"].as_array().unwrap();
        let added = apply(text, &add(text, array, "/d/k.toml", "\n").unwrap());
        assert_eq!(added, expected_added);
        let (doc2, added_text) = imports(&added);
        let array2 = doc2.as_table()["imports"].as_array().unwrap();
        assert!(contains(array2, "/d/k.toml"));
        let removed = apply(
            added_text,
            &remove(added_text, array2, "/d/k.toml").unwrap(),
        );
        assert_eq!(removed, text, "removing our entry gives the original back");
    }

    #[test]
    fn add_and_remove_keep_the_list_as_written() {
        round_trip("imports = []\n", "imports = [\"/d/k.toml\"]\n");
        round_trip(
            "imports = ['/a.toml']\n",
            "imports = ['/a.toml', \"/d/k.toml\"]\n",
        );
        round_trip(
            "imports = [\n  \"/a.toml\",\n  \"/b.toml\", # b\n]\n",
            "imports = [\n  \"/a.toml\",\n  \"/b.toml\",\n  \"/d/k.toml\", # b\n]\n",
        );
        round_trip(
            "imports = [ # one a line\n    \"/a.toml\"\n]\n",
            "imports = [ # one a line\n    \"/a.toml\",\n    \"/d/k.toml\"\n]\n",
        );
    }

    #[test]
    fn remove_first_and_only_entries() {
        let text = "imports = [\"/d/k.toml\", \"/b\"]\n";
        let (doc, text) = imports(text);
        let array = doc.as_table()["imports"].as_array().unwrap();
        assert_eq!(
            apply(text, &remove(text, array, "/d/k.toml").unwrap()),
            "imports = [\"/b\"]\n"
        );
        let text = "imports = [\"/d/k.toml\" , ]\n";
        let (doc, text) = imports(text);
        let array = doc.as_table()["imports"].as_array().unwrap();
        assert_eq!(
            apply(text, &remove(text, array, "/d/k.toml").unwrap()),
            "imports = [ ]\n"
        );
    }

    #[test]
    fn globs_cover_like_go() {
        let dir = Path::new("/etc/containerd");
        let ours = Path::new("/etc/containerd/conf.d/kata-nri-manager.toml");
        assert!(entry_covers("/etc/containerd/conf.d/*.toml", dir, ours));
        assert!(entry_covers("conf.d/*.toml", dir, ours));
        assert!(entry_covers("conf.d/kata-nri-manager.toml", dir, ours));
        assert!(entry_covers("/etc/containerd/conf.d/[a-k]*", dir, ours));
        assert!(!entry_covers("/etc/containerd/conf.d/[^k]*", dir, ours));
        assert!(!entry_covers("/etc/containerd/*.toml", dir, ours));
        assert!(!entry_covers("/etc/containerd/*", dir, ours));
        assert!(entry_covers(
            "/etc/containerd/*/kata-nri-manager.to?l",
            dir,
            ours
        ));
    }
}
