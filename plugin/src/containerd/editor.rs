//! The format-preserving editor: given containerd's config text, the stanzas the product wants and
//! the record of what we own, it computes the new text of the main file (and of our drop-in).
//!
//! toml_edit parses the file and tells where every table and value is; the edit itself is a set
//! of splices of the original text (see `splice`). Bytes outside our stanzas, our `imports` entry
//! and the NRI `disable` flag are copied as they are, CRLF line ends and header quoting included.
//! A stanza that already says what we want is left alone, so a second run changes no byte.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;

use toml_edit::{Document, Item, Table, Value};

use super::dropin::{self, DropinChange, recognised_dropin, render_dropin};
use super::edit::{Change, Edit, EditOptions, Mode, Placement};
use super::error::{ContainerdError, Result};
use super::layout::{self, Lookup};
use super::ownership::OwnershipRecord;
use super::render::{self, Look};
use super::schema::{self, Schema};
use super::splice::{self, Splice};
use super::stanza::RuntimeStanza;
use super::template::mask;
use super::verify::verify;

mod import;
mod nri;

/// Computes the edit that makes containerd's config serve exactly `desired` among the stanzas we
/// own. `original` is the main file's text ("" when it does not exist); an empty `desired`
/// removes everything we wrote (uninstall).
pub fn apply(
    original: &str,
    desired: &[RuntimeStanza],
    owned: &OwnershipRecord,
    mode: Mode,
    opts: &EditOptions,
) -> Result<Edit> {
    let path = opts.config_path.as_path();
    schema::refuse_generated(path, original)?;
    let template = schema::is_template(path);
    let masked = mask(path, original, template)?;
    let doc = parse(path, &masked)?;
    let root = doc.as_table();
    let declared = schema::declared_version(path, root)?;
    // A template gets `version` from the generated base; its own keys say nothing about it.
    let has_content = !template && !root.is_empty();
    let schema = schema::decide(path, declared, opts.containerd_version, has_content)?;
    let placement = resolve_mode(path, mode, schema, template)?;
    check_desired(desired)?;

    let mut editor = Editor {
        path,
        text: original,
        masked: &masked,
        root,
        schema,
        eol: layout::eol_of(original),
        splices: Vec::new(),
        removed: Vec::new(),
        changes: Vec::new(),
        adds_version: false,
    };
    let wanted: BTreeSet<&str> = desired.iter().map(|s| s.name.as_str()).collect();

    // A file with no key at all (missing, empty, only comments) gets `version` first when we
    // write into it: containerd reads a file without one as version 1. Dropped again in
    // `finish` if nothing else is written.
    if declared.is_none() && !has_content && !template {
        editor.add_version();
    }
    // Removals before insertions: nothing may be anchored inside a stanza that goes away.
    editor.remove_stanzas(owned, &wanted, placement, opts)?;
    if placement == Placement::Inline {
        editor.write_stanzas(desired, owned, opts)?;
    }
    let nri_enabled = opts.enable_nri && editor.enable_nri()?;
    let dropin_path = opts.dropin_path();
    let previous_dropin = owned
        .dropin
        .clone()
        .or_else(|| recognised_dropin(&dropin_path, opts.dropin_text.as_deref()));
    let needs_dropin = placement == Placement::Dropin && !desired.is_empty();
    let dropin_record = if needs_dropin {
        Some(editor.add_import(&dropin_path, previous_dropin.as_ref())?)
    } else {
        if let Some(record) = &previous_dropin {
            editor.remove_import(record)?;
        }
        None
    };

    let main = editor.finish()?;
    let dropin_version = declared.is_some() || editor.adds_version;
    let dropin = dropin::dropin_change(
        &dropin_path,
        opts.dropin_text.as_deref(),
        owned,
        needs_dropin.then(|| render_dropin(schema, dropin_version, desired)),
    )?;
    let mut changes = editor.changes;
    match &dropin {
        DropinChange::Write { path, .. } => changes.push(Change::DropinWritten(path.clone())),
        DropinChange::Remove { path, .. } => changes.push(Change::DropinRemoved(path.clone())),
        DropinChange::Untouched => {}
    }
    let edit = Edit {
        schema,
        placement,
        original: original.to_string(),
        main,
        dropin,
        owned: OwnershipRecord {
            config_path: Some(path.to_path_buf()),
            runtimes: wanted.iter().map(|n| n.to_string()).collect(),
            dropin: dropin_record,
            nri_enabled: owned.nri_enabled || nri_enabled,
            ..OwnershipRecord::default()
        },
        changes,
    };
    verify(&edit, desired, owned, opts)?;
    Ok(edit)
}

fn parse<'t>(path: &Path, text: &'t str) -> Result<Document<&'t str>> {
    Document::parse(text).map_err(|e| ContainerdError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })
}

fn resolve_mode(path: &Path, mode: Mode, schema: Schema, template: bool) -> Result<Placement> {
    let path_buf = || path.to_path_buf();
    match mode {
        Mode::Inline => Ok(Placement::Inline),
        Mode::Dropin if template => Err(ContainerdError::DropinOnTemplate { path: path_buf() }),
        Mode::Dropin if schema == Schema::V2 => {
            Err(ContainerdError::DropinOnV2 { path: path_buf() })
        }
        Mode::Dropin => Ok(Placement::Dropin),
        Mode::Auto if schema == Schema::V3 && !template => Ok(Placement::Dropin),
        Mode::Auto => Ok(Placement::Inline),
    }
}

fn check_desired(desired: &[RuntimeStanza]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for stanza in desired {
        stanza.validate()?;
        if !seen.insert(stanza.name.as_str()) {
            return Err(ContainerdError::InvalidStanza(format!(
                "runtime {:?} is asked for twice",
                stanza.name
            )));
        }
    }
    Ok(())
}

/// The state of one edit of the main file.
struct Editor<'a> {
    path: &'a Path,
    /// The original text: what splices apply to.
    text: &'a str,
    /// The text toml_edit parsed (templates' actions blanked, same offsets).
    masked: &'a str,
    root: &'a Table,
    schema: Schema,
    eol: &'static str,
    splices: Vec<Splice>,
    /// Ranges of stanzas being removed: nothing may be anchored in them.
    removed: Vec<Range<usize>>,
    changes: Vec<Change>,
    /// A `version` line goes at the end of the (keyless) file, before our blocks.
    adds_version: bool,
}

impl<'a> Editor<'a> {
    fn runtime_path<'n>(&self, name: &'n str) -> [&'n str; 5]
    where
        'a: 'n,
    {
        let [a, b, c, d] = self.schema.runtimes_path();
        [a, b, c, d, name]
    }

    fn shape_error(&self, what: String, shape: &'static str) -> ContainerdError {
        ContainerdError::Shape {
            path: self.path.to_path_buf(),
            what,
            shape,
        }
    }

    /// The stanza `name` as a header table, if the file has it. Other shapes (inline table, dotted
    /// keys) are reported: we never wrote them, and cannot replace them in place.
    fn find_stanza(&self, name: &str) -> Result<Option<&'a Table>> {
        let path = self.runtime_path(name);
        let item = match layout::lookup(self.root, &path) {
            Ok(Lookup::Found(item)) => item,
            Ok(Lookup::Missing(_)) => return Ok(None),
            Err(blocked) => return Err(self.shape_error(blocked.what, blocked.shape)),
        };
        match item.as_table() {
            Some(table) if layout::has_header(table) => Ok(Some(table)),
            _ => Err(self.shape_error(
                format!("runtime {}", layout::dotted_path(&path)),
                shape_of(item),
            )),
        }
    }

    /// Whether a stanza `name` exists in any shape.
    fn stanza_exists(&self, name: &str) -> bool {
        matches!(
            layout::lookup(self.root, &self.runtime_path(name)),
            Ok(Lookup::Found(_))
        )
    }

    /// Removes stanzas we own that are no longer wanted here: not desired, or (drop-in placement)
    /// any of ours or adopted in the main file.
    fn remove_stanzas(
        &mut self,
        owned: &OwnershipRecord,
        wanted: &BTreeSet<&str>,
        placement: Placement,
        opts: &EditOptions,
    ) -> Result<()> {
        let dropin = placement == Placement::Dropin;
        let mut names: BTreeSet<&str> = owned.runtimes.iter().map(String::as_str).collect();
        if dropin {
            for name in wanted {
                if owned.owns(name) || !self.stanza_exists(name) {
                    continue;
                }
                if !opts.adopt.contains(*name) {
                    return Err(self.not_owned(name));
                }
                names.insert(name);
            }
        }
        for name in names {
            if wanted.contains(name) && !dropin {
                continue;
            }
            let Some(table) = self.find_stanza(name)? else {
                continue;
            };
            for range in layout::table_ranges(self.masked, table) {
                let start =
                    layout::blank_line_before(self.masked, range.start).unwrap_or(range.start);
                self.removed.push(start..range.end);
                self.splices.push(Splice::remove(start..range.end));
            }
            self.changes
                .push(match (wanted.contains(name), owned.owns(name)) {
                    (false, _) => Change::Removed(name.to_string()),
                    (true, true) => Change::Moved(name.to_string()),
                    (true, false) => Change::Adopted(name.to_string()),
                });
        }
        Ok(())
    }

    fn not_owned(&self, name: &str) -> ContainerdError {
        ContainerdError::NotOwned {
            path: self.path.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// Writes each desired stanza in place (replacing ours when it differs) or after the last
    /// runtime.
    fn write_stanzas(
        &mut self,
        desired: &[RuntimeStanza],
        owned: &OwnershipRecord,
        opts: &EditOptions,
    ) -> Result<()> {
        let mut new = Vec::new();
        for stanza in desired {
            let name = stanza.name.as_str();
            if !self.stanza_exists(name) {
                new.push(stanza);
                continue;
            }
            let ours = owned.owns(name);
            if !ours && !opts.adopt.contains(name) {
                return Err(self.not_owned(name));
            }
            let Some(table) = self.find_stanza(name)? else {
                new.push(stanza);
                continue;
            };
            let same =
                render::canon_item(&Item::Table(table.clone())) == render::canon_stanza(stanza);
            if !same {
                self.replace_stanza(stanza, table);
            }
            if !ours {
                self.changes.push(Change::Adopted(name.to_string()));
            } else if !same {
                self.changes.push(Change::Updated(name.to_string()));
            }
        }
        if !new.is_empty() {
            self.insert_stanzas(&new)?;
        }
        Ok(())
    }

    /// Rewrites a stanza where it stands, keeping its header's look.
    fn replace_stanza(&mut self, stanza: &RuntimeStanza, table: &Table) {
        let name = stanza.name.as_str();
        let look = self
            .header_look_of(table, name)
            .unwrap_or_else(|| Look::runtimes(self.schema, self.eol));
        let mut ranges = layout::table_ranges(self.masked, table).into_iter();
        if let Some(first) = ranges.next() {
            self.splices
                .push(Splice::replace(first, render::render_stanza(stanza, &look)));
        }
        for rest in ranges {
            let start = layout::blank_line_before(self.masked, rest.start).unwrap_or(rest.start);
            self.splices.push(Splice::remove(start..rest.end));
        }
    }

    fn header_look_of(&self, table: &Table, name: &str) -> Option<Look> {
        let parent_path = self.schema.runtimes_path();
        let Ok(Lookup::Found(parent)) = layout::lookup(self.root, &parent_path) else {
            return None;
        };
        let key = parent.as_table()?.key(name)?;
        layout::header_look(self.masked, table, key).map(|look| Look::from_header(look, self.eol))
    }

    /// Inserts new stanzas after the last runtime of the table (styled like it), or after the
    /// last table of the deepest existing ancestor, or at the end of the file.
    fn insert_stanzas(&mut self, new: &[&RuntimeStanza]) -> Result<()> {
        let path = self.schema.runtimes_path();
        let (chain, runtimes) = match layout::lookup(self.root, &path) {
            Ok(Lookup::Found(item)) => match item.as_table() {
                Some(table) => (Vec::new(), Some(table)),
                None => return Err(self.shape_error(layout::dotted_path(&path), shape_of(item))),
            },
            Ok(Lookup::Missing(chain)) => (chain, None),
            Err(blocked) => return Err(self.shape_error(blocked.what, blocked.shape)),
        };
        let sibling = runtimes.and_then(|t| layout::last_header_child(t, &self.removed));
        let look = sibling
            .and_then(|(table, key)| layout::header_look(self.masked, table, key))
            .map(|look| Look::from_header(look, self.eol))
            .unwrap_or_else(|| Look::runtimes(self.schema, self.eol));
        let at = match (sibling, runtimes) {
            (Some((table, _)), _) => self.after_subtree(table),
            (None, Some(runtimes)) => self.anchor_in(&self.chain_to(runtimes, &path)),
            (None, None) => self.anchor_in(&chain),
        };
        let mut text = String::new();
        for stanza in new {
            text.push_str(&self.separator_at(at, !text.is_empty()));
            text.push_str(&render::render_stanza(stanza, &look));
            self.changes.push(Change::Added(stanza.name.clone()));
        }
        self.splices.push(Splice::insert(at, text));
        Ok(())
    }

    /// The end of a header table's whole subtree (its sub-tables included).
    fn after_subtree(&self, table: &Table) -> usize {
        let mut tables = Vec::new();
        layout::header_tables(table, &mut tables);
        tables
            .iter()
            .map(|t| layout::body_end(self.masked, t))
            .max()
            .unwrap_or(self.text.len())
    }

    /// The tables from the root down to the one at `path` (which exists).
    fn chain_to(&self, table: &'a Table, path: &[&str]) -> Vec<&'a Table> {
        let mut chain = vec![self.root];
        let mut current = self.root;
        for key in &path[..path.len() - 1] {
            match current.get(key).and_then(Item::as_table) {
                Some(next) => {
                    chain.push(next);
                    current = next;
                }
                None => break,
            }
        }
        chain.push(table);
        chain
    }

    fn anchor_in(&self, chain: &[&Table]) -> usize {
        layout::insertion_point(self.masked, chain, &self.removed)
    }

    /// What goes before a block inserted at `at`: one blank line (none at the very start of a
    /// file), and first a line end when the text there does not end a line (no final newline).
    fn separator_at(&self, at: usize, after_our_block: bool) -> String {
        let before = &self.text[..at];
        // Our version line, when added, ends the file with a line end at this point.
        let after_version = self.adds_version && at == self.text.len();
        if after_our_block || after_version || before.ends_with('\n') {
            self.eol.to_string()
        } else if before.is_empty() {
            String::new()
        } else {
            format!("{0}{0}", self.eol)
        }
    }

    /// The new text. A version line alone is not worth a write: it is dropped when it is the
    /// only change.
    fn finish(&mut self) -> Result<String> {
        if self.adds_version && self.splices.len() == 1 {
            self.splices.clear();
            self.changes
                .retain(|c| !matches!(c, Change::VersionAdded(_)));
            self.adds_version = false;
        }
        splice::apply(self.text, self.splices.clone()).map_err(|(a, b)| {
            ContainerdError::EditCheck {
                path: self.path.to_path_buf(),
                detail: format!("edits at bytes {a:?} and {b:?} overlap"),
            }
        })
    }
}

fn shape_of(item: &Item) -> &'static str {
    match item {
        Item::Value(Value::InlineTable(_)) => "an inline table",
        Item::Table(table) if table.is_dotted() => "written with dotted keys",
        Item::Table(_) => "a table without its own [header]",
        Item::ArrayOfTables(_) => "an array of tables",
        _ => "a value, not a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::dropin::DROPIN_MARKER;
    use crate::containerd::schema::ContainerdVersion;

    const V21_DEFAULT: &str =
        include_str!("../../tests/containerd_golden/inputs/containerd-2.1-default.toml");
    const ODD_V2: &str =
        include_str!("../../tests/containerd_golden/inputs/odd-formatting-v2.toml");

    fn opts(version: (u32, u32)) -> EditOptions {
        EditOptions {
            containerd_version: Some(ContainerdVersion::new(version.0, version.1)),
            ..EditOptions::new("/etc/containerd/config.toml")
        }
    }

    fn stanza(name: &str) -> RuntimeStanza {
        let mut s = RuntimeStanza::new(name, format!("io.containerd.{name}.v2"));
        s.config_path = Some(format!("/opt/kata/{name}.toml"));
        s
    }

    fn owning(names: &[&str]) -> OwnershipRecord {
        OwnershipRecord {
            runtimes: names.iter().map(|n| n.to_string()).collect(),
            ..OwnershipRecord::default()
        }
    }

    fn err(result: Result<Edit>) -> String {
        match result {
            Ok(edit) => panic!("expected an error, got {:?}", edit.changes),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_class_asked_for_twice_is_refused() {
        let desired = [stanza("kata"), stanza("kata")];
        let e = err(apply(
            "version = 3\n",
            &desired,
            &owning(&[]),
            Mode::Inline,
            &opts((2, 1)),
        ));
        assert!(e.contains("asked for twice"), "{e}");
    }

    #[test]
    fn shapes_we_cannot_edit_in_place_are_named() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = { runc = { runtime_type = \"x\" } }\n";
        let e = err(apply(
            text,
            &[stanza("kata")],
            &owning(&[]),
            Mode::Inline,
            &opts((1, 7)),
        ));
        assert!(e.contains("an inline table"), "{e}");
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\nkata = { runtime_type = \"x\" }\n";
        let e = err(apply(
            text,
            &[stanza("kata")],
            &owning(&["kata"]),
            Mode::Inline,
            &opts((1, 7)),
        ));
        assert!(e.contains("an inline table") && e.contains("kata"), "{e}");
    }

    #[test]
    fn adopting_an_equal_stanza_changes_no_byte() {
        let first = apply(
            V21_DEFAULT,
            &[stanza("kata")],
            &owning(&[]),
            Mode::Inline,
            &opts((2, 1)),
        )
        .unwrap();
        // Another tool wrote the same stanza; we lost our record.
        let mut adopt = opts((2, 1));
        adopt.adopt.insert("kata".into());
        let edit = apply(
            &first.main,
            &[stanza("kata")],
            &owning(&[]),
            Mode::Inline,
            &adopt,
        )
        .unwrap();
        assert_eq!(edit.main, first.main);
        assert_eq!(edit.changes, [Change::Adopted("kata".into())]);
        assert!(edit.owned.owns("kata"));
    }

    #[test]
    fn templates_and_version_one_files_are_refused_where_unsafe() {
        let mut template = opts((2, 1));
        template.config_path =
            "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl".into();
        let e = err(apply(
            "{{ template \"base\" . }}\n",
            &[stanza("kata")],
            &owning(&[]),
            Mode::Dropin,
            &template,
        ));
        assert!(e.contains("template"), "{e}");
        let e = err(apply(
            "root = \"/x\"\n",
            &[stanza("kata")],
            &owning(&[]),
            Mode::Auto,
            &opts((1, 7)),
        ));
        assert!(e.contains("version 1"), "{e}");
    }

    #[test]
    fn a_dropin_of_someone_else_is_not_overwritten_but_ours_is_recognised() {
        let mut options = opts((2, 1));
        options.dropin_text = Some("# the operator's own file\n".into());
        let e = err(apply(
            V21_DEFAULT,
            &[stanza("kata")],
            &owning(&[]),
            Mode::Dropin,
            &options,
        ));
        assert!(e.contains("not written by kata-nri-manager"), "{e}");
        // A crash lost the record after the drop-in was written: the marker still says it is ours.
        options.dropin_text = Some(format!("{DROPIN_MARKER}: old\n"));
        let edit = apply(
            V21_DEFAULT,
            &[stanza("kata")],
            &owning(&[]),
            Mode::Dropin,
            &options,
        )
        .unwrap();
        assert!(matches!(
            edit.dropin,
            DropinChange::Write { old: Some(_), .. }
        ));
    }

    #[test]
    fn nri_is_switched_on_only_where_needed() {
        let header_only = "version = 2\n\n  [plugins.\"io.containerd.nri.v1.nri\"]  # NRI\n    socket_path = \"/run/nri.sock\"\n";
        let mut options = opts((1, 7));
        options.enable_nri = true;
        let edit = apply(header_only, &[], &owning(&[]), Mode::Auto, &options).unwrap();
        assert_eq!(
            edit.main,
            "version = 2\n\n  [plugins.\"io.containerd.nri.v1.nri\"]  # NRI\n    disable = false\n    socket_path = \"/run/nri.sock\"\n"
        );
        assert!(edit.owned.nri_enabled);
        // containerd 2.x runs NRI unless told not to: nothing to add.
        let mut options = opts((2, 1));
        options.enable_nri = true;
        let edit = apply("version = 3\n", &[], &owning(&[]), Mode::Auto, &options).unwrap();
        assert!(edit.is_noop() && edit.changes.is_empty());
    }

    #[test]
    fn a_removed_last_stanza_is_no_anchor_for_a_new_one() {
        let first = apply(
            V21_DEFAULT,
            &[stanza("a"), stanza("b")],
            &owning(&[]),
            Mode::Inline,
            &opts((2, 1)),
        )
        .unwrap();
        let second = apply(
            &first.main,
            &[stanza("c")],
            &first.owned,
            Mode::Inline,
            &opts((2, 1)),
        )
        .unwrap();
        let direct = apply(
            V21_DEFAULT,
            &[stanza("c")],
            &owning(&[]),
            Mode::Inline,
            &opts((2, 1)),
        )
        .unwrap();
        assert_eq!(second.main, direct.main);
    }

    #[test]
    fn an_adopted_stanza_moves_into_the_dropin() {
        let text = "version = 3\n\n# The operator's own.\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata]\n  runtime_type = 'io.containerd.kata.v2'\n\n[other]\n";
        let e = err(apply(
            text,
            &[stanza("kata")],
            &owning(&[]),
            Mode::Dropin,
            &opts((2, 1)),
        ));
        assert!(e.contains("did not create"), "{e}");
        let mut adopt = opts((2, 1));
        adopt.adopt.insert("kata".into());
        let edit = apply(text, &[stanza("kata")], &owning(&[]), Mode::Dropin, &adopt).unwrap();
        assert_eq!(
            edit.main,
            "version = 3\nimports = [\"/etc/containerd/conf.d/kata-nri-manager.toml\"]\n\n# The operator's own.\n\n[other]\n"
        );
        assert!(
            matches!(&edit.dropin, DropinChange::Write { text, .. } if text.contains("runtimes.kata]"))
        );
        assert!(edit.changes.contains(&Change::Adopted("kata".into())));
        assert!(edit.owned.owns("kata"));
    }

    #[test]
    fn runtimes_made_of_dotted_keys_get_a_header_sub_table() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes.runc.runtime_type = \"io.containerd.runc.v2\"\n[other]\n";
        let edit = apply(
            text,
            &[stanza("kata")],
            &owning(&[]),
            Mode::Inline,
            &opts((1, 7)),
        )
        .unwrap();
        assert_eq!(
            edit.main,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes.runc.runtime_type = \"io.containerd.runc.v2\"\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata]\nruntime_type = \"io.containerd.kata.v2\"\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata.options]\nConfigPath = \"/opt/kata/kata.toml\"\n[other]\n"
        );
    }

    #[test]
    fn diff_shows_every_file_of_the_edit() {
        let edit = apply(
            V21_DEFAULT,
            &[stanza("kata")],
            &owning(&[]),
            Mode::Dropin,
            &opts((2, 1)),
        )
        .unwrap();
        let diff = super::super::diff::edit_diff(&edit, Path::new("/etc/containerd/config.toml"));
        assert!(
            diff.contains(
                "-imports = []\n+imports = [\"/etc/containerd/conf.d/kata-nri-manager.toml\"]"
            ),
            "{diff}"
        );
        assert!(
            diff.contains("--- /dev/null\n+++ /etc/containerd/conf.d/kata-nri-manager.toml"),
            "{diff}"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn variant(name: &str, flavour: u8) -> RuntimeStanza {
            let mut s = stanza(name);
            if flavour & 1 == 1 {
                s.runtime_path = Some(format!("/opt/gate/{name}"));
            }
            if flavour & 2 == 2 {
                s.pod_annotations = vec!["io.katacontainers.config.hypervisor.*".into()];
            }
            if flavour & 4 == 4 {
                s.config_path = None;
            }
            s
        }

        fn desired_set() -> impl Strategy<Value = Vec<RuntimeStanza>> {
            proptest::collection::vec((0usize..4, 0u8..8), 0..4).prop_map(|picks| {
                let names = ["kata-qemu", "kata-clh", "kata-fc", "kata-qemu-nvidia-gpu"];
                let mut seen = BTreeSet::new();
                picks
                    .into_iter()
                    .filter(|(i, _)| seen.insert(*i))
                    .map(|(i, flavour)| variant(names[i], flavour))
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any sequence of desired sets: every step is idempotent, and removing everything
            /// gives the original back.
            #[test]
            fn sequences_are_idempotent_and_reversible(
                steps in proptest::collection::vec(desired_set(), 1..5),
                v3 in any::<bool>(),
                dropin in any::<bool>(),
            ) {
                let (original, version, mode) = if v3 {
                    (V21_DEFAULT, (2, 1), if dropin { Mode::Dropin } else { Mode::Inline })
                } else {
                    (ODD_V2, (1, 7), Mode::Inline)
                };
                let mut text = original.to_string();
                let mut dropin_text: Option<String> = None;
                let mut owned = OwnershipRecord::default();
                for desired in steps.iter().chain([&Vec::new()]) {
                    let mut options = opts(version);
                    options.dropin_text = dropin_text.clone();
                    let edit = apply(&text, desired, &owned, mode, &options).unwrap();
                    match &edit.dropin {
                        DropinChange::Write { text, .. } => dropin_text = Some(text.clone()),
                        DropinChange::Remove { .. } => dropin_text = None,
                        DropinChange::Untouched => {}
                    }
                    options.dropin_text = dropin_text.clone();
                    let again = apply(&edit.main, desired, &edit.owned, mode, &options).unwrap();
                    prop_assert!(again.is_noop(), "not idempotent: {:?}", again.changes);
                    prop_assert_eq!(&again.main, &edit.main);
                    text = edit.main;
                    owned = edit.owned;
                }
                prop_assert!(dropin_text.is_none());
                // A block inserted at the end of a file without a final newline leaves one.
                prop_assert!(text == original || text == format!("{original}\n"), "not restored:\n{text}");
            }
        }
    }
}
