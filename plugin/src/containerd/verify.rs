//! The editor's self-check: the new texts are read back and must say exactly what was asked
//! before anything is written. A failure here is a bug of the editor, never of the input.

use std::collections::BTreeSet;

use toml_edit::{Document, Table};

use super::dropin::DropinChange;
use super::edit::{Edit, EditOptions, Placement};
use super::error::{ContainerdError, Result};
use super::ownership::OwnershipRecord;
use super::render;
use super::schema::{self, Schema};
use super::stanza::RuntimeStanza;
use super::template::mask;

/// Reads the result back and checks it says what was asked: a failed check is a bug of the
/// editor, caught before anything is written.
pub(crate) fn verify(
    edit: &Edit,
    desired: &[RuntimeStanza],
    owned: &OwnershipRecord,
    opts: &EditOptions,
) -> Result<()> {
    let path = opts.config_path.as_path();
    let fail = |detail: String| ContainerdError::EditCheck {
        path: path.to_path_buf(),
        detail,
    };
    let masked = mask(path, &edit.main, schema::is_template(path))?;
    let doc = Document::parse(masked.as_ref())
        .map_err(|e| fail(format!("the result does not parse: {e}")))?;
    let check_file = |root: &Table, inline: bool, file: &str| -> Result<()> {
        let runtimes = runtimes_of(root, edit.schema);
        for stanza in desired {
            let found = runtimes.and_then(|t| t.get(&stanza.name));
            match (inline, found) {
                (true, Some(item)) if render::canon_item(item) == render::canon_stanza(stanza) => {}
                (false, None) => {}
                (true, _) => {
                    return Err(fail(format!(
                        "{file} lacks runtime {:?} as asked",
                        stanza.name
                    )));
                }
                (false, Some(_)) => {
                    return Err(fail(format!("{file} still has runtime {:?}", stanza.name)));
                }
            }
        }
        let wanted: BTreeSet<&str> = desired.iter().map(|s| s.name.as_str()).collect();
        for name in owned
            .runtimes
            .iter()
            .filter(|n| !wanted.contains(n.as_str()))
        {
            if runtimes.is_some_and(|t| t.contains_key(name)) {
                return Err(fail(format!(
                    "{file} still has runtime {name:?}, which is no longer wanted"
                )));
            }
        }
        Ok(())
    };
    check_file(
        doc.as_table(),
        edit.placement == Placement::Inline,
        "the main file",
    )?;
    if let DropinChange::Write { text, .. } = &edit.dropin {
        let dropin = Document::parse(text.as_str())
            .map_err(|e| fail(format!("the drop-in does not parse: {e}")))?;
        check_file(dropin.as_table(), true, "the drop-in")?;
    }
    Ok(())
}

fn runtimes_of(root: &Table, schema: Schema) -> Option<&Table> {
    let mut table = root;
    for key in schema.runtimes_path() {
        table = table.get(key)?.as_table()?;
    }
    Some(table)
}
