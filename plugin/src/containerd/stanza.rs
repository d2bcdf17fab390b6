//! The runtime handler stanza the rest of the product asks for, independent of the operator
//! config's types: what the editor writes under `…containerd.runtimes.<name>`.

use std::collections::BTreeMap;

use super::error::{ContainerdError, Result};

/// A value of a key under the stanza's `options` table (kata and runc read these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    String(String),
    Integer(i64),
    Bool(bool),
    Array(Vec<OptionValue>),
}

impl From<&str> for OptionValue {
    fn from(s: &str) -> Self {
        OptionValue::String(s.to_string())
    }
}

impl From<String> for OptionValue {
    fn from(s: String) -> Self {
        OptionValue::String(s)
    }
}

impl From<i64> for OptionValue {
    fn from(n: i64) -> Self {
        OptionValue::Integer(n)
    }
}

impl From<bool> for OptionValue {
    fn from(b: bool) -> Self {
        OptionValue::Bool(b)
    }
}

impl OptionValue {
    /// The TOML value, in toml_edit's default formatting (its escaping is the one containerd's
    /// parser reads back).
    pub(crate) fn to_toml(&self) -> toml_edit::Value {
        match self {
            OptionValue::String(s) => s.as_str().into(),
            OptionValue::Integer(n) => (*n).into(),
            OptionValue::Bool(b) => (*b).into(),
            OptionValue::Array(items) => {
                toml_edit::Value::Array(items.iter().map(OptionValue::to_toml).collect())
            }
        }
    }
}

/// The key under `options` that kata's shim reads its configuration file from.
pub const CONFIG_PATH_OPTION: &str = "ConfigPath";

/// One runtime handler: `[…containerd.runtimes.<name>]` and its `options` table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeStanza {
    /// The handler name (the RuntimeClass's `handler`, the class name).
    pub name: String,
    /// `runtime_type`, e.g. `io.containerd.kata-qemu.v2`.
    pub runtime_type: String,
    /// `runtime_path`: the shim binary containerd runs (the gate or the real shim).
    pub runtime_path: Option<String>,
    pub privileged_without_host_devices: Option<bool>,
    pub pod_annotations: Vec<String>,
    pub container_annotations: Vec<String>,
    pub snapshotter: Option<String>,
    /// `options.ConfigPath`: the kata configuration file.
    pub config_path: Option<String>,
    /// Further keys of `options` (sorted by name when written).
    pub extra_options: BTreeMap<String, OptionValue>,
}

impl RuntimeStanza {
    /// A stanza with just a name and a runtime type; set the rest with the public fields.
    pub fn new(name: impl Into<String>, runtime_type: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            runtime_type: runtime_type.into(),
            ..Self::default()
        }
    }

    /// Checks what the editor cannot write faithfully. The trust rules (which keys a policy may
    /// set) are the caller's; this only guards the file's shape.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(ContainerdError::InvalidStanza(why));
        if self.name.is_empty() {
            return bad("the runtime name is empty".into());
        }
        if self.name.chars().any(char::is_control) {
            return bad(format!(
                "runtime name {:?} has control characters",
                self.name
            ));
        }
        if self.runtime_type.is_empty() {
            return bad(format!("runtime {:?} has an empty runtime_type", self.name));
        }
        if self.extra_options.contains_key(CONFIG_PATH_OPTION) {
            return bad(format!(
                "runtime {:?} sets {CONFIG_PATH_OPTION} in extra_options: use config_path",
                self.name
            ));
        }
        if let Some(key) = self.extra_options.keys().find(|k| k.is_empty()) {
            return bad(format!(
                "runtime {:?} has an empty option name {key:?}",
                self.name
            ));
        }
        Ok(())
    }

    /// The stanza's own keys in the order they are written, with their values.
    pub(crate) fn entries(&self) -> Vec<(&str, toml_edit::Value)> {
        let mut entries: Vec<(&str, toml_edit::Value)> =
            vec![("runtime_type", self.runtime_type.as_str().into())];
        if let Some(path) = &self.runtime_path {
            entries.push(("runtime_path", path.as_str().into()));
        }
        if let Some(privileged) = self.privileged_without_host_devices {
            entries.push(("privileged_without_host_devices", privileged.into()));
        }
        if !self.pod_annotations.is_empty() {
            entries.push(("pod_annotations", string_array(&self.pod_annotations)));
        }
        if !self.container_annotations.is_empty() {
            entries.push((
                "container_annotations",
                string_array(&self.container_annotations),
            ));
        }
        if let Some(snapshotter) = &self.snapshotter {
            entries.push(("snapshotter", snapshotter.as_str().into()));
        }
        entries
    }

    /// The keys of the `options` table in the order they are written (empty: no table).
    pub(crate) fn option_entries(&self) -> Vec<(&str, toml_edit::Value)> {
        let config_path = self
            .config_path
            .as_deref()
            .map(|path| (CONFIG_PATH_OPTION, path.into()));
        let extra = self
            .extra_options
            .iter()
            .map(|(key, value)| (key.as_str(), value.to_toml()));
        config_path.into_iter().chain(extra).collect()
    }
}

fn string_array(items: &[String]) -> toml_edit::Value {
    toml_edit::Value::Array(items.iter().map(String::as_str).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_guards_the_shape() {
        assert!(
            RuntimeStanza::new("kata-qemu", "io.containerd.kata-qemu.v2")
                .validate()
                .is_ok()
        );
        assert!(RuntimeStanza::new("", "x").validate().is_err());
        assert!(RuntimeStanza::new("kata", "").validate().is_err());
        assert!(RuntimeStanza::new("ka\nta", "x").validate().is_err());
        let mut stanza = RuntimeStanza::new("kata", "x");
        stanza
            .extra_options
            .insert("ConfigPath".into(), "/x".into());
        let err = stanza.validate().unwrap_err().to_string();
        assert!(err.contains("use config_path"), "{err}");
    }

    #[test]
    fn entries_skip_what_is_unset() {
        let mut stanza = RuntimeStanza::new("kata", "io.containerd.kata.v2");
        let keys: Vec<_> = stanza.entries().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["runtime_type"]);
        assert!(stanza.option_entries().is_empty());
        stanza.config_path = Some("/opt/kata/configuration.toml".into());
        stanza.extra_options.insert("Debug".into(), true.into());
        let options: Vec<_> = stanza
            .option_entries()
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        assert_eq!(
            options,
            [
                "ConfigPath = \"/opt/kata/configuration.toml\"",
                "Debug = true"
            ]
        );
    }
}
