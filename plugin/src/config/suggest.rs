//! "Did you mean" for misspelt keys and values.

/// The candidate closest to `typed`, if it is close enough to be what was meant: the same but for
/// case, or a few edits away for its length.
pub(super) fn closest<'a>(
    typed: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let typed_lower = typed.to_lowercase();
    let budget = (typed.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| {
            let distance = if c.to_lowercase() == typed_lower {
                0
            } else {
                edit_distance(&typed_lower, &c.to_lowercase())
            };
            (distance, c)
        })
        .filter(|(distance, _)| *distance <= budget)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let keys = ["name", "artifacts", "runtime", "nodeSelector"];
        assert_eq!(closest("artifact", keys), Some("artifacts"));
        assert_eq!(closest("nodeselector", keys), Some("nodeSelector"));
        assert_eq!(closest("runtme", keys), Some("runtime"));
        assert_eq!(closest("setAsDefault", keys), None);
        assert_eq!(
            closest("runtimeClass", ["runtimeClasses", "registries"]),
            Some("runtimeClasses")
        );
        assert_eq!(closest("ondemand", ["eager", "onDemand"]), Some("onDemand"));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
    }
}
