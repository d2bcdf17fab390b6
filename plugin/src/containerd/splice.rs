//! Edits of the original text as byte ranges replaced by new text: everything outside the ranges
//! is copied unchanged, which is how the editor keeps foreign bytes byte for byte.

use std::ops::Range;

/// Replace `range` of the original with `text` (an insertion when the range is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Splice {
    pub range: Range<usize>,
    pub text: String,
}

impl Splice {
    pub(crate) fn insert(at: usize, text: impl Into<String>) -> Self {
        Self {
            range: at..at,
            text: text.into(),
        }
    }

    pub(crate) fn remove(range: Range<usize>) -> Self {
        Self {
            range,
            text: String::new(),
        }
    }

    pub(crate) fn replace(range: Range<usize>, text: impl Into<String>) -> Self {
        Self {
            range,
            text: text.into(),
        }
    }
}

/// Applies non-overlapping splices; insertions at the same offset keep the order they were made
/// in. Overlapping splices are a bug of the caller: the ranges that collide are returned.
pub(crate) fn apply(
    text: &str,
    mut splices: Vec<Splice>,
) -> Result<String, (Range<usize>, Range<usize>)> {
    // Stable: equal keys keep their order of creation.
    splices.sort_by_key(|s| (s.range.start, s.range.end));
    let mut out =
        String::with_capacity(text.len() + splices.iter().map(|s| s.text.len()).sum::<usize>());
    let mut at = 0;
    let mut previous: Option<Range<usize>> = None;
    for splice in splices {
        if let Some(prev) = &previous
            && splice.range.start < prev.end
        {
            return Err((prev.clone(), splice.range));
        }
        out.push_str(&text[at..splice.range.start]);
        out.push_str(&splice.text);
        at = splice.range.end;
        previous = Some(splice.range);
    }
    out.push_str(&text[at..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_apply_in_offset_order() {
        let text = "abcdef";
        let out = apply(
            text,
            vec![
                Splice::replace(4..5, "E"),
                Splice::insert(1, "1"),
                Splice::insert(1, "2"),
                Splice::remove(2..3),
            ],
        )
        .unwrap();
        assert_eq!(out, "a12bdEf");
        assert!(apply(text, vec![Splice::remove(1..3), Splice::remove(2..4)]).is_err());
    }
}
