//! Our stanzas as text, and the comparison that tells whether a stanza already says what we want
//! (so that an equal stanza is left byte for byte, whatever its formatting).

use std::collections::BTreeMap;

use toml_edit::{Item, Key, Value};

use super::layout::HeaderLook;
use super::schema::Schema;
use super::stanza::RuntimeStanza;

/// How our header and key lines look: copied from a sibling header, or containerd's flat form.
#[derive(Debug, Clone)]
pub(crate) struct Look {
    pub prefix: String,
    pub suffix: String,
    pub header_indent: String,
    pub key_indent: String,
    pub eol: &'static str,
}

impl Look {
    /// `[plugins.<plugin>.containerd.runtimes.` without indentation, quoted as containerd's
    /// `config default` of that version quotes it.
    pub(crate) fn runtimes(schema: Schema, eol: &'static str) -> Self {
        let [plugins, plugin, containerd, runtimes] = schema.runtimes_path();
        let plugin = quoted_key(plugin, schema.header_quote());
        Self {
            prefix: format!("[{plugins}.{plugin}.{containerd}.{runtimes}."),
            suffix: "]".into(),
            header_indent: String::new(),
            key_indent: String::new(),
            eol,
        }
    }

    /// `[plugins.` for a new plugin section, without indentation.
    pub(crate) fn plugins(eol: &'static str) -> Self {
        Self {
            prefix: "[plugins.".into(),
            suffix: "]".into(),
            header_indent: String::new(),
            key_indent: String::new(),
            eol,
        }
    }

    pub(crate) fn from_header(look: HeaderLook, eol: &'static str) -> Self {
        Self {
            prefix: look.prefix,
            suffix: look.suffix,
            header_indent: look.header_indent,
            key_indent: look.key_indent,
            eol,
        }
    }

    /// The indentation of a sub-table's keys: one more step, as containerd nests them.
    fn nested_key_indent(&self) -> String {
        let step = self
            .key_indent
            .strip_prefix(self.header_indent.as_str())
            .unwrap_or("");
        format!("{}{step}", self.key_indent)
    }
}

/// A key as written in a header or on a key line: bare when TOML allows, else quoted with
/// `quote` (containerd 2.x writes `'…'`, 1.x `"…"`) when that needs no escaping.
pub(crate) fn quoted_key(name: &str, quote: char) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        return name.to_string();
    }
    if quote == '\'' && !name.contains('\'') && !name.chars().any(char::is_control) {
        return format!("'{name}'");
    }
    Key::new(name).display_repr().into_owned()
}

/// One stanza: its header line, its keys, and (after a blank line) its `options` table.
pub(crate) fn render_stanza(stanza: &RuntimeStanza, look: &Look) -> String {
    let eol = look.eol;
    let name = quoted_key(&stanza.name, '"');
    let mut out = format!(
        "{}{}{name}{}{eol}",
        look.header_indent, look.prefix, look.suffix
    );
    for (key, value) in stanza.entries() {
        out.push_str(&format!(
            "{}{} = {value}{eol}",
            look.key_indent,
            quoted_key(key, '"')
        ));
    }
    let options = stanza.option_entries();
    if !options.is_empty() {
        let option_indent = look.nested_key_indent();
        out.push_str(&format!(
            "{eol}{}{}{name}.options{}{eol}",
            look.key_indent, look.prefix, look.suffix
        ));
        for (key, value) in options {
            out.push_str(&format!(
                "{option_indent}{} = {value}{eol}",
                quoted_key(key, '"')
            ));
        }
    }
    out
}

/// A new section with one key: `[plugins."io.containerd.nri.v1.nri"]` / `disable = false`.
pub(crate) fn render_section(
    name: &str,
    quote: char,
    key: &str,
    value: &str,
    look: &Look,
) -> String {
    let eol = look.eol;
    format!(
        "{}{}{}{}{eol}{}{key} = {value}{eol}",
        look.header_indent,
        look.prefix,
        quoted_key(name, quote),
        look.suffix,
        look.key_indent,
    )
}

/// A TOML item reduced to what containerd reads from it: formatting, order and comments gone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Canon {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Canon>),
    Table(BTreeMap<String, Canon>),
}

pub(crate) fn canon_item(item: &Item) -> Option<Canon> {
    match item {
        Item::None => None,
        Item::Value(value) => Some(canon_value(value)),
        Item::Table(table) => Some(Canon::Table(
            table
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), canon_item(v)?)))
                .collect(),
        )),
        Item::ArrayOfTables(array) => Some(Canon::Array(
            array
                .iter()
                .map(|t| canon_item(&Item::Table(t.clone())).unwrap_or(Canon::Array(Vec::new())))
                .collect(),
        )),
    }
}

fn canon_value(value: &Value) -> Canon {
    match value {
        Value::String(s) => Canon::String(s.value().clone()),
        Value::Integer(n) => Canon::Integer(*n.value()),
        Value::Float(x) => Canon::Float(*x.value()),
        Value::Boolean(b) => Canon::Bool(*b.value()),
        Value::Datetime(d) => Canon::Datetime(d.value().to_string()),
        Value::Array(array) => Canon::Array(array.iter().map(canon_value).collect()),
        Value::InlineTable(table) => Canon::Table(
            table
                .iter()
                .map(|(k, v)| (k.to_string(), canon_value(v)))
                .collect(),
        ),
    }
}

/// What `stanza` reads as once written: its rendering parsed back.
pub(crate) fn canon_stanza(stanza: &RuntimeStanza) -> Option<Canon> {
    let look = Look::runtimes(Schema::V3, "\n");
    let text = render_stanza(stanza, &look);
    let doc = toml_edit::Document::parse(text.as_str()).ok()?;
    let mut item = doc.as_item();
    for key in Schema::V3
        .runtimes_path()
        .iter()
        .chain([&stanza.name.as_str()])
    {
        item = item.get(key)?;
    }
    canon_item(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kata() -> RuntimeStanza {
        let mut stanza = RuntimeStanza::new("kata-qemu", "io.containerd.kata-qemu.v2");
        stanza.runtime_path = Some("/opt/kata/bin/containerd-shim-kata-v2".into());
        stanza.privileged_without_host_devices = Some(true);
        stanza.pod_annotations = vec!["io.katacontainers.*".into()];
        stanza.config_path =
            Some("/opt/kata/share/defaults/kata-containers/configuration-qemu.toml".into());
        stanza
    }

    #[test]
    fn flat_rendering() {
        let text = render_stanza(&kata(), &Look::runtimes(Schema::V2, "\n"));
        assert_eq!(
            text,
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-qemu]\n\
             runtime_type = \"io.containerd.kata-qemu.v2\"\n\
             runtime_path = \"/opt/kata/bin/containerd-shim-kata-v2\"\n\
             privileged_without_host_devices = true\n\
             pod_annotations = [\"io.katacontainers.*\"]\n\
             \n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.kata-qemu.options]\n\
             ConfigPath = \"/opt/kata/share/defaults/kata-containers/configuration-qemu.toml\"\n"
        );
    }

    #[test]
    fn indented_rendering_nests_options_one_step_deeper() {
        let look = Look {
            prefix: "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.".into(),
            suffix: "]".into(),
            header_indent: "        ".into(),
            key_indent: "          ".into(),
            eol: "\r\n",
        };
        let text = render_stanza(&kata(), &look);
        assert!(text.starts_with("        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata-qemu]\r\n          runtime_type = "), "{text}");
        assert!(text.contains("\r\n\r\n          [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kata-qemu.options]\r\n            ConfigPath = "), "{text}");
    }

    #[test]
    fn keys_are_quoted_only_when_needed() {
        assert_eq!(quoted_key("kata-qemu", '\''), "kata-qemu");
        assert_eq!(
            quoted_key("io.containerd.nri.v1.nri", '\''),
            "'io.containerd.nri.v1.nri'"
        );
        assert_eq!(
            quoted_key("io.containerd.nri.v1.nri", '"'),
            "\"io.containerd.nri.v1.nri\""
        );
        assert_eq!(quoted_key("it's", '\''), "\"it's\"");
    }

    #[test]
    fn canon_ignores_formatting() {
        let a = toml_edit::Document::parse("[t]\nx = 'a'\ny = [ 1,2 ]\n[t.o]\nz = true\n").unwrap();
        let b = toml_edit::Document::parse("t = { x = \"a\", y = [1, 2], o = { z = true } }\n")
            .unwrap();
        assert_eq!(
            canon_item(&a.as_table()["t"]),
            canon_item(&b.as_table()["t"])
        );
        let stanza = canon_stanza(&kata()).unwrap();
        let Canon::Table(keys) = stanza else {
            panic!("a stanza is a table")
        };
        assert!(keys.contains_key("options"));
    }
}
