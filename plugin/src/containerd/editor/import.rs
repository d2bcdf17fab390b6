//! Our drop-in in the main file's `imports`: added exactly once, removed when we no longer
//! write one.

use std::path::Path;

use toml_edit::{Item, Value};

use super::Editor;
use crate::containerd::edit::Change;
use crate::containerd::error::Result;
use crate::containerd::imports;
use crate::containerd::layout;
use crate::containerd::ownership::DropinRecord;
use crate::containerd::splice::Splice;

impl<'a> Editor<'a> {
    /// Makes the main file import our drop-in exactly once. Returns the drop-in's record.
    pub(super) fn add_import(
        &mut self,
        dropin: &Path,
        previous: Option<&DropinRecord>,
    ) -> Result<DropinRecord> {
        let entry = dropin.to_string_lossy().into_owned();
        let config_dir = self.path.parent().unwrap_or(Path::new("/"));
        let created_before = previous.is_some_and(|p| p.created_imports_key);
        let Some(item) = self.root.get("imports") else {
            let at = self.imports_line_position();
            let lead = if self.text[..at].is_empty() || self.text[..at].ends_with('\n') {
                ""
            } else {
                self.eol
            };
            let quoted = Value::from(entry.as_str()).to_string();
            self.splices.push(Splice::insert(
                at,
                format!("{lead}imports = [{quoted}]{}", self.eol),
            ));
            self.changes.push(Change::ImportAdded(entry.clone()));
            return Ok(DropinRecord {
                path: dropin.to_path_buf(),
                import_entry: Some(entry),
                created_imports_key: true,
            });
        };
        let array = item
            .as_array()
            .ok_or_else(|| self.shape_error("imports".into(), "not an array"))?;
        if imports::contains(array, &entry) {
            return Ok(DropinRecord {
                path: dropin.to_path_buf(),
                import_entry: Some(entry),
                created_imports_key: created_before,
            });
        }
        let covered = array
            .iter()
            .filter_map(Value::as_str)
            .any(|e| imports::entry_covers(e, config_dir, dropin));
        if covered {
            return Ok(DropinRecord {
                path: dropin.to_path_buf(),
                import_entry: None,
                created_imports_key: false,
            });
        }
        let splice = imports::add(self.masked, array, &entry, self.eol)
            .ok_or_else(|| self.shape_error("imports".into(), "a list without positions"))?;
        self.splices.push(splice);
        self.changes.push(Change::ImportAdded(entry.clone()));
        Ok(DropinRecord {
            path: dropin.to_path_buf(),
            import_entry: Some(entry),
            created_imports_key: created_before,
        })
    }

    /// After `version`, else after the last top-level key, else at the end of the leading blank
    /// and comment lines (a new file: after the version line we add).
    fn imports_line_position(&self) -> usize {
        if let Some(span) = self.root.get("version").and_then(Item::span) {
            return layout::line_end(self.masked, span.end);
        }
        if let Some(end) = layout::root_keys_end(self.masked, self.root) {
            return end;
        }
        if self.text.trim().is_empty() {
            return self.text.len();
        }
        0
    }

    /// Takes our entry out of `imports` (the whole line when we created it and it is left empty).
    pub(super) fn remove_import(&mut self, record: &DropinRecord) -> Result<()> {
        let Some(entry) = &record.import_entry else {
            return Ok(());
        };
        let Some(item) = self.root.get("imports") else {
            return Ok(());
        };
        let Some(array) = item.as_array() else {
            return Ok(());
        };
        if !imports::contains(array, entry) {
            return Ok(());
        }
        let only_ours = array.iter().all(|v| v.as_str() == Some(entry.as_str()));
        let key_start = self
            .root
            .key("imports")
            .and_then(|k| k.span())
            .map(|s| s.start);
        let splice = match (
            record.created_imports_key && only_ours,
            key_start,
            array.span(),
        ) {
            (true, Some(key_start), Some(span)) => {
                imports::remove_key_line(self.masked, key_start, span)
            }
            _ => match imports::remove(self.masked, array, entry) {
                Some(splice) => splice,
                None => return Ok(()),
            },
        };
        self.splices.push(splice);
        self.changes.push(Change::ImportRemoved(entry.clone()));
        Ok(())
    }
}
