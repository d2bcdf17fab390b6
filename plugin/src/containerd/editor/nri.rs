//! The file-wide switches an edit may need: the `version` line of a file with no key at all,
//! and NRI turned on (flipped, or its section added).

use toml_edit::{Item, Table, Value};

use super::{Editor, shape_of};
use crate::containerd::edit::Change;
use crate::containerd::error::Result;
use crate::containerd::layout::{self, Lookup};
use crate::containerd::render::{self, Look};
use crate::containerd::schema::NRI_PLUGIN;
use crate::containerd::splice::Splice;

impl<'a> Editor<'a> {
    /// `version = N` at the end of a file with no key at all. Its splice is the first one made,
    /// so it comes before any block inserted at the end of the file.
    pub(super) fn add_version(&mut self) {
        let version = self.schema.version();
        let at = self.text.len();
        let lead = if self.text.is_empty() || self.text.ends_with('\n') {
            ""
        } else {
            self.eol
        };
        self.splices.push(Splice::insert(
            at,
            format!("{lead}version = {version}{}", self.eol),
        ));
        self.changes.push(Change::VersionAdded(version));
        self.adds_version = true;
    }

    /// Makes NRI run: flips `disable = true`, or (1.7, where NRI is off by default) adds
    /// `disable = false` to the section or the section itself. Other NRI keys stay as they are.
    pub(super) fn enable_nri(&mut self) -> Result<bool> {
        let path = self.schema.nri_path();
        let section = match layout::lookup(self.root, &path) {
            Ok(Lookup::Found(item)) => item,
            Ok(Lookup::Missing(chain)) => {
                if self.schema.nri_enabled_by_default() {
                    return Ok(false);
                }
                self.insert_nri_section(&chain);
                return Ok(true);
            }
            Err(blocked) => return Err(self.shape_error(blocked.what, blocked.shape)),
        };
        if !matches!(section, Item::Table(_) | Item::Value(Value::InlineTable(_))) {
            return Err(self.shape_error(layout::dotted_path(&path), shape_of(section)));
        }
        match section
            .get("disable")
            .map(|item| (item.as_bool(), item.span()))
        {
            Some((Some(false), _)) => Ok(false),
            Some((Some(true), Some(span))) => {
                self.splices.push(Splice::replace(span, "false"));
                self.changes.push(Change::NriEnabled);
                Ok(true)
            }
            Some(_) => Err(self.shape_error(
                format!("{}.disable", layout::dotted_path(&path)),
                "not a boolean",
            )),
            None if self.schema.nri_enabled_by_default() => Ok(false),
            None => {
                let header = section
                    .as_table()
                    .and_then(|table| Some((table, layout::header_span(table)?)));
                let Some((table, header)) = header else {
                    return Err(self.shape_error(
                        layout::dotted_path(&path),
                        "written without its own [header] and without a disable key",
                    ));
                };
                let indent = self.first_key_indent(table, header.start);
                let at = layout::line_end(self.masked, header.end);
                let lead = if self.text[..at].ends_with('\n') {
                    ""
                } else {
                    self.eol
                };
                self.splices.push(Splice::insert(
                    at,
                    format!("{lead}{indent}disable = false{}", self.eol),
                ));
                self.changes.push(Change::NriEnabled);
                Ok(true)
            }
        }
    }

    fn first_key_indent(&self, table: &Table, header_start: usize) -> String {
        let key_start = table
            .iter()
            .filter_map(|(name, _)| table.key(name).and_then(|k| k.span()))
            .map(|span| span.start)
            .min();
        match key_start {
            Some(start) => layout::indent_at(self.masked, start).to_string(),
            None => layout::indent_at(self.masked, header_start).to_string(),
        }
    }

    /// Adds `[plugins."io.containerd.nri.v1.nri"]` with `disable = false` after the last plugin
    /// section (styled like it), or at the end of the file.
    fn insert_nri_section(&mut self, chain: &[&'a Table]) {
        let plugins = chain.get(1).copied();
        let sibling = plugins.and_then(|t| layout::last_header_child(t, &self.removed));
        let look = sibling
            .and_then(|(table, key)| layout::header_look(self.masked, table, key))
            .map(|look| Look::from_header(look, self.eol))
            .unwrap_or_else(|| Look::plugins(self.eol));
        let at = match sibling {
            Some((table, _)) => self.after_subtree(table),
            None => self.anchor_in(chain),
        };
        let mut text = self.separator_at(at, false);
        text.push_str(&render::render_section(
            NRI_PLUGIN,
            self.schema.header_quote(),
            "disable",
            "false",
            &look,
        ));
        self.splices.push(Splice::insert(at, text));
        self.changes.push(Change::NriEnabled);
    }
}
