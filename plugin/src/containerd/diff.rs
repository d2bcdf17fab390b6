//! The unified diff `configure --dry-run` prints: what the edit would write, file by file.

use std::path::Path;

use similar::TextDiff;

use super::dropin::DropinChange;
use super::edit::Edit;

/// Lines of context around each change, as `diff -u` shows.
const CONTEXT: usize = 3;

/// A unified diff of `old` → `new` with `--- old_name` / `+++ new_name` headers; empty when the
/// texts are equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(CONTEXT)
        .missing_newline_hint(true)
        .header(old_name, new_name)
        .to_string()
}

/// The diff of every file the edit changes: the main file, then the drop-in (a new file is
/// diffed from `/dev/null`, a removed one to it). Empty when the edit changes nothing.
pub fn edit_diff(edit: &Edit, main_path: &Path) -> String {
    let main = main_path.display().to_string();
    let mut out = unified(&edit.original, &edit.main, &main, &main);
    match &edit.dropin {
        DropinChange::Untouched => {}
        DropinChange::Write { path, old, text } => {
            let name = path.display().to_string();
            let old_name = if old.is_some() {
                name.as_str()
            } else {
                "/dev/null"
            };
            out.push_str(&unified(
                old.as_deref().unwrap_or(""),
                text,
                old_name,
                &name,
            ));
        }
        DropinChange::Remove { path, old } => {
            out.push_str(&unified(old, "", &path.display().to_string(), "/dev/null"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diff_has_headers_and_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\n";
        let new = "a\nb\nc\nD\ne\nf\ng\n";
        let diff = unified(old, new, "config.toml", "config.toml");
        assert_eq!(
            diff,
            "--- config.toml\n+++ config.toml\n@@ -1,7 +1,7 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n"
        );
        assert!(unified(old, old, "x", "x").is_empty());
    }
}
