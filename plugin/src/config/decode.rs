//! serde over a document the walk has already cleaned.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::error::Problems;
use super::walk::index;

/// A decoded document and its runtime classes, each with its index in the file.
pub(super) struct Decoded<T, C> {
    pub(super) top: T,
    pub(super) classes: Vec<(usize, C)>,
}

/// Decodes `document`; runtime classes one by one, so an entry the walk set aside (now null)
/// does not hide the others from the semantic rules. serde failing here means the schema and
/// the types disagree: it is reported, not hidden.
pub(super) fn decode<T, C>(mut document: Value, problems: &mut Problems) -> Option<Decoded<T, C>>
where
    T: DeserializeOwned,
    C: DeserializeOwned,
{
    let classes = match &mut document {
        Value::Mapping(map) => map.remove("runtimeClasses"),
        _ => None,
    };
    let top = match serde_yaml::from_value::<T>(document) {
        Ok(top) => Some(top),
        Err(e) => {
            problems.push("", format!("internal error, please report: {e}"));
            None
        }
    };
    let mut decoded = Vec::new();
    if let Some(Value::Sequence(items)) = classes {
        for (i, item) in items.into_iter().enumerate() {
            if item.is_null() {
                continue;
            }
            match serde_yaml::from_value::<C>(item) {
                Ok(class) => decoded.push((i, class)),
                Err(e) => problems.push(
                    index("runtimeClasses", i),
                    format!("internal error, please report: {e}"),
                ),
            }
        }
    }
    top.map(|top| Decoded {
        top,
        classes: decoded,
    })
}
