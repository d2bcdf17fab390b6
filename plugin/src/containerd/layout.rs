//! Where things are in the original text: lines, the byte ranges of tables and their bodies, and
//! the look of existing headers. The editor splices the original text at these ranges, so every
//! byte outside them stays as it was (toml_edit's re-rendering would normalise CRLF line ends and
//! the quoting of header keys).

use std::ops::Range;

use toml_edit::{Item, Key, Table, Value};

/// The line ending a file uses, judged by its first line: what our own lines get.
pub(crate) fn eol_of(text: &str) -> &'static str {
    match text.find('\n') {
        Some(i) if i > 0 && text.as_bytes()[i - 1] == b'\r' => "\r\n",
        _ => "\n",
    }
}

/// Start of the line holding `offset` when only spaces and tabs precede it there; else `offset`.
pub(crate) fn line_start(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset];
    let indent = before
        .iter()
        .rev()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    let start = offset - indent;
    if start == 0 || before[start - 1] == b'\n' {
        start
    } else {
        offset
    }
}

/// The offset just past the newline that ends the line holding `offset` (or the end of text).
pub(crate) fn line_end(text: &str, offset: usize) -> usize {
    text[offset..]
        .find('\n')
        .map_or(text.len(), |i| offset + i + 1)
}

/// The start of the blank line just before `start` (a line start), if there is one: a block we
/// insert is preceded by one blank line, which goes with it when it is removed.
pub(crate) fn blank_line_before(text: &str, start: usize) -> Option<usize> {
    if start == 0 {
        return None;
    }
    let prev_start = text[..start - 1].rfind('\n').map_or(0, |i| i + 1);
    text[prev_start..start]
        .trim()
        .is_empty()
        .then_some(prev_start)
}

/// The indentation in front of `offset` on its line ("" when something else precedes it).
pub(crate) fn indent_at(text: &str, offset: usize) -> &str {
    &text[line_start(text, offset)..offset]
}

/// A table written with its own `[header]` (not implicit, not made of dotted keys).
pub(crate) fn has_header(table: &Table) -> bool {
    !table.is_implicit() && !table.is_dotted()
}

/// The header tables of `table`'s subtree, `table` included when it has a header.
pub(crate) fn header_tables<'d>(table: &'d Table, out: &mut Vec<&'d Table>) {
    if has_header(table) {
        out.push(table);
    }
    for (_, item) in table.iter() {
        match item {
            Item::Table(child) => header_tables(child, out),
            Item::ArrayOfTables(array) => array.iter().for_each(|child| header_tables(child, out)),
            _ => {}
        }
    }
}

/// Span of `[header]` of a header table.
pub(crate) fn header_span(table: &Table) -> Option<Range<usize>> {
    table.span().filter(|_| has_header(table))
}

/// The end of a header table's body: past the line of its last key (dotted keys included), or
/// of its header when it has no key. Comments after the last key belong to the next table.
pub(crate) fn body_end(text: &str, table: &Table) -> usize {
    let start = header_span(table).map_or(0, |span| span.end);
    let end = last_value_end(table).map_or(start, |end| end.max(start));
    line_end(text, end)
}

/// The end of the last value written in `table`'s own body (through dotted keys).
fn last_value_end(table: &Table) -> Option<usize> {
    table
        .iter()
        .filter_map(|(_, item)| match item {
            Item::Value(value) => value.span().map(|span| span.end),
            Item::Table(child) if child.is_dotted() => last_value_end(child),
            _ => None,
        })
        .max()
}

/// The end of the root table's own keys (those before the first header), if it has any.
pub(crate) fn root_keys_end(text: &str, root: &Table) -> Option<usize> {
    last_value_end(root).map(|end| line_end(text, end))
}

/// The byte ranges a header table and its header sub-tables occupy, each from the start of its
/// header line to the end of its body; ranges separated only by blank space are merged.
pub(crate) fn table_ranges(text: &str, table: &Table) -> Vec<Range<usize>> {
    let mut tables = Vec::new();
    header_tables(table, &mut tables);
    let mut ranges: Vec<Range<usize>> = tables
        .iter()
        .filter_map(|t| header_span(t).map(|span| line_start(text, span.start)..body_end(text, t)))
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::new();
    for range in ranges {
        match merged.last_mut() {
            Some(last)
                if text[last.end.min(range.start)..range.start]
                    .trim()
                    .is_empty() =>
            {
                last.end = last.end.max(range.end);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// What is at a key path.
pub(crate) enum Lookup<'d> {
    /// The item at the full path.
    Found(&'d Item),
    /// The path stops: the tables that exist along it, from the root down.
    Missing(Vec<&'d Table>),
}

/// Why a path cannot hold a `[table]` of ours: what is in the way and what it is.
pub(crate) struct Blocked {
    pub what: String,
    pub shape: &'static str,
}

/// Walks `path` from `root`. Every step but the last must be a table (of any kind): an inline
/// table, a value or an array of tables in the way cannot get a `[header]` below it.
pub(crate) fn lookup<'d>(root: &'d Table, path: &[&str]) -> Result<Lookup<'d>, Blocked> {
    let mut chain = vec![root];
    let mut table = root;
    for (depth, key) in path.iter().enumerate() {
        let Some(item) = table.get(key) else {
            return Ok(Lookup::Missing(chain));
        };
        if depth + 1 == path.len() {
            return Ok(Lookup::Found(item));
        }
        let shape = match item {
            Item::Table(child) => {
                chain.push(child);
                table = child;
                continue;
            }
            Item::Value(Value::InlineTable(_)) => "an inline table",
            Item::ArrayOfTables(_) => "an array of tables",
            _ => "a value, not a table",
        };
        return Err(Blocked {
            what: dotted_path(&path[..=depth]),
            shape,
        });
    }
    // Only an empty path gets here: nothing below the root was asked for.
    Ok(Lookup::Missing(chain))
}

/// A key path as a person reads it: `plugins."io.containerd.cri.v1.runtime".containerd`.
pub(crate) fn dotted_path(path: &[&str]) -> String {
    path.iter()
        .map(|key| Key::new(*key).display_repr().into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

/// How an existing header looks: `[plugins."…".containerd.runtimes.` + key + `]`, its indentation
/// and that of its first key, so that a header we add next to it looks the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderLook {
    /// The header text up to the last key, from `[` on.
    pub prefix: String,
    /// The header text after the last key, up to and including `]`.
    pub suffix: String,
    pub header_indent: String,
    pub key_indent: String,
}

/// The look of `table`'s header, whose last key is `key` (as stored in its parent).
pub(crate) fn header_look(text: &str, table: &Table, key: &Key) -> Option<HeaderLook> {
    let span = header_span(table)?;
    let key_span = key.span()?;
    // The parent keeps the key of the header that first named the table; only a key inside this
    // header tells where this header's last key starts.
    if key_span.start < span.start || key_span.end > span.end {
        return None;
    }
    let header_indent = indent_at(text, span.start).to_string();
    let key_indent = first_key_offset(table)
        .map(|offset| indent_at(text, offset).to_string())
        .unwrap_or_else(|| header_indent.clone());
    Some(HeaderLook {
        prefix: text[span.start..key_span.start].to_string(),
        suffix: text[key_span.end..span.end].to_string(),
        header_indent,
        key_indent,
    })
}

fn first_key_offset(table: &Table) -> Option<usize> {
    table
        .iter()
        .filter(|(_, item)| item.is_value() || item.as_table().is_some_and(Table::is_dotted))
        .filter_map(|(name, _)| table.key(name).and_then(Key::span).map(|s| s.start))
        .min()
}

/// The last header child of `table` (by position in the text) whose header does not start in
/// one of `excluded`, with its key: the sibling a new child is placed after and styled like.
pub(crate) fn last_header_child<'d>(
    table: &'d Table,
    excluded: &[Range<usize>],
) -> Option<(&'d Table, &'d Key)> {
    table
        .iter()
        .filter_map(|(name, item)| Some((item.as_table()?, table.key(name)?)))
        .filter_map(|(child, key)| header_span(child).map(|span| (span.start, child, key)))
        .filter(|(start, _, _)| !excluded.iter().any(|r| r.contains(start)))
        .max_by_key(|(start, _, _)| *start)
        .map(|(_, child, key)| (child, key))
}

/// Where a new header table below the tables `chain` (root first) goes: after the last table
/// (not in `excluded`) of the deepest existing ancestor's subtree, else at the end of the text.
pub(crate) fn insertion_point(text: &str, chain: &[&Table], excluded: &[Range<usize>]) -> usize {
    for ancestor in chain.iter().skip(1).rev() {
        let mut tables = Vec::new();
        header_tables(ancestor, &mut tables);
        let end = tables
            .iter()
            .filter(|t| {
                header_span(t).is_some_and(|span| !excluded.iter().any(|r| r.contains(&span.start)))
            })
            .map(|t| body_end(text, t))
            .max();
        if let Some(end) = end {
            return end;
        }
    }
    text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> toml_edit::Document<&str> {
        toml_edit::Document::parse(text).unwrap()
    }

    #[test]
    fn lines() {
        let text = "a = 1\r\n  [x]  # c\n\n  b = 2";
        assert_eq!(eol_of(text), "\r\n");
        assert_eq!(eol_of("a\nb"), "\n");
        let x = text.find('[').unwrap();
        assert_eq!(line_start(text, x), 7);
        assert_eq!(indent_at(text, x), "  ");
        assert_eq!(line_end(text, x), text.find("\n\n").unwrap() + 1);
        assert_eq!(line_end(text, text.len() - 1), text.len());
        let b = text.find('b').unwrap();
        assert_eq!(
            blank_line_before(text, line_start(text, b)),
            Some(text.find("\n\n").unwrap() + 1)
        );
        assert_eq!(blank_line_before(text, 7), None);
    }

    #[test]
    fn table_ranges_cover_header_and_body_only() {
        let text = "[a]\nx = 1\n\n  [a.b]  # hdr\n  y = [\n 1,\n ]  # end\n# next\n[c]\nz = 1\n";
        let doc = parse(text);
        let a = doc.as_table().get("a").unwrap().as_table().unwrap();
        let ranges = table_ranges(text, a);
        assert_eq!(ranges.len(), 1);
        assert_eq!(
            &text[ranges[0].clone()],
            "[a]\nx = 1\n\n  [a.b]  # hdr\n  y = [\n 1,\n ]  # end\n"
        );
    }

    #[test]
    fn header_look_of_a_sibling() {
        let text = "  [plugins.'x.y'.runtimes.runc]\n    t = 1\n";
        let doc = parse(text);
        let path = ["plugins", "x.y", "runtimes"];
        let Ok(Lookup::Found(item)) = lookup(doc.as_table(), &path) else {
            panic!("runtimes not found");
        };
        let runtimes = item.as_table().unwrap();
        let (runc, key) = last_header_child(runtimes, &[]).unwrap();
        let look = header_look(text, runc, key).unwrap();
        assert_eq!(look.prefix, "[plugins.'x.y'.runtimes.");
        assert_eq!(look.suffix, "]");
        assert_eq!(look.header_indent, "  ");
        assert_eq!(look.key_indent, "    ");
    }

    #[test]
    fn lookup_refuses_inline_parents() {
        let doc = parse("plugins = { a = 1 }\n");
        let Err(blocked) = lookup(doc.as_table(), &["plugins", "a", "b"]) else {
            panic!("an inline table must block the path");
        };
        assert_eq!(blocked.shape, "an inline table");
        assert_eq!(blocked.what, "plugins");
    }
}
