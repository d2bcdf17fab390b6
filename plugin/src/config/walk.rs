//! Checks a YAML document against the schema, reporting every problem with its path and removing
//! what is wrong, so that serde then decodes the rest without failing and the semantic rules can
//! still run on it in the same round.

use std::collections::HashSet;

use serde_yaml::{Mapping, Value};

use super::error::Problems;
use super::schema::{CONFIG, Check, Key, Scope, Shape, Variant};
use super::suggest;

/// Which file is being read; decides which keys it may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// A root-owned file with everything (no `--node-config`).
    Trusted,
    /// `--config` when a `--node-config` is given: the ConfigMap.
    Operator,
    /// `--node-config`: node-local keys only.
    Node,
}

pub(super) const NODE_LOCAL_IN_OPERATOR: &str = "node-local key not allowed in the operator \
     config unless the --node-config file sets it to the same value";
/// What to do about a node-local key in the operator file, after each of its messages.
const NODE_LOCAL_FIX: &str = "set the same value in the node file, or remove it here";
pub(super) const SHARED_IN_NODE: &str = "not allowed in the node config, which holds only \
     node-local keys (set it in the operator config, --config)";

impl Role {
    fn refusal(self, scope: Scope) -> Option<&'static str> {
        match (self, scope) {
            (Role::Operator, Scope::NodeLocal) => Some(NODE_LOCAL_IN_OPERATOR),
            (Role::Node, Scope::Shared) => Some(SHARED_IN_NODE),
            _ => None,
        }
    }
}

/// Walks a whole file. An empty file is an empty mapping: every key takes its default.
pub(super) fn walk_document(document: &mut Value, role: Role, problems: &mut Problems) {
    walk(document, role, None, problems);
}

/// Walks the operator file next to `node`, the node file's document as its own walk left it. A
/// node-local key of the operator file passes when the node file sets it to the same value (so a
/// file written for k8s-kata-manager, which carries `artifactsDir`, loads unchanged) and is then
/// removed: the node's value is the one used, and the operator file still chooses nothing the
/// node did not.
pub(super) fn walk_operator_document(document: &mut Value, node: &Value, problems: &mut Problems) {
    walk(document, Role::Operator, Some(node), problems);
}

fn walk(document: &mut Value, role: Role, node: Option<&Value>, problems: &mut Problems) {
    if document.is_null() {
        *document = Value::Mapping(Mapping::new());
        return;
    }
    let mut walker = Walker {
        role,
        problems,
        node_file: node.is_some(),
    };
    if !walker.walk(document, &CONFIG, "", node) && !document.is_mapping() {
        *document = Value::Mapping(Mapping::new());
    }
}

/// `path.key`, or `path["odd key"]` when the key is not a plain word (label keys, policy names).
pub(super) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

struct Walker<'a> {
    role: Role,
    problems: &'a mut Problems,
    /// In the operator role: whether a node file's document is there to compare with. The walk
    /// carries the node's value at the place it is at (`node` of the walk functions).
    node_file: bool,
}

/// Whether the operator's `value` says nothing the node file's `node` does not: the same value,
/// or, for a mapping (`gate`, `kataConfig`, a `restart`), every entry the same in the node's.
fn covered(value: &Value, node: &Value) -> bool {
    match (value, node) {
        (Value::Mapping(ours), Value::Mapping(theirs)) => ours
            .iter()
            .all(|(key, v)| theirs.get(key).is_some_and(|t| covered(v, t))),
        _ => value == node,
    }
}

/// A value for a message, compact: `"/var/lib/x"`, `{"timeout":"60s"}`.
fn show(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "a different value".into())
}

impl Walker<'_> {
    /// Checks `value` against `shape`. Returns whether serde can decode it; when not, the caller
    /// removes it (the problem is already reported).
    /// `node`: the node file's value at the same place, when the operator file is walked next to
    /// one.
    fn walk(&mut self, value: &mut Value, shape: &Shape, path: &str, node: Option<&Value>) -> bool {
        match shape {
            Shape::Struct(keys) => self.walk_struct(value, keys, path, None, node),
            Shape::Tagged { tag, variants } => self.walk_tagged(value, tag, variants, path, node),
            Shape::List { item, partial } => self.walk_list(value, item, *partial, path, node),
            Shape::Dict { key, value: shape } => self.walk_dict(value, *key, shape, path),
            Shape::Text(check) => match value {
                Value::String(text) => self.checked(check(text), path),
                _ => self.not_text(path, value, *check),
            },
            Shape::Bool => value.is_bool() || self.mismatch(path, "true or false", value),
            Shape::Count => {
                let fits = value.as_u64().is_some_and(|n| u32::try_from(n).is_ok());
                fits || self.mismatch(path, "a whole number (0 or more)", value)
            }
            Shape::Enum(names) => match value {
                Value::String(text) if names.contains(&text.as_str()) => true,
                Value::String(text) => {
                    let message = not_one_of(text, names);
                    self.problems.push(path, message);
                    false
                }
                // `provision: on` is YAML's true: naming the choices helps, "quote it" would not.
                _ => self.mismatch(path, &format!("one of: {}", names.join(", ")), value),
            },
            Shape::Size(check) => match value {
                Value::String(text) => self.checked(check(text), path),
                Value::Number(n) if n.as_u64().is_some() => {
                    self.checked(check(&n.to_string()), path)
                }
                _ => self.mismatch(path, "a size such as 8Gi or 500Mi", value),
            },
            Shape::Argv => self.walk_argv(value, path),
            Shape::Json => self.walk_json(value, path),
        }
    }

    /// The problem with a node-local key of the operator file, or `None` when the node file
    /// sets it to the same value.
    fn node_local_in_operator(&self, value: &Value, node: Option<&Value>) -> Option<String> {
        if !self.node_file {
            return Some(format!("{NODE_LOCAL_IN_OPERATOR} ({NODE_LOCAL_FIX})"));
        }
        match node {
            Some(node) if covered(value, node) => None,
            Some(node) => Some(format!(
                "{NODE_LOCAL_IN_OPERATOR}; the node file sets it to {} ({NODE_LOCAL_FIX})",
                show(node)
            )),
            None => Some(format!(
                "{NODE_LOCAL_IN_OPERATOR}; the node file does not set it ({NODE_LOCAL_FIX})"
            )),
        }
    }

    fn walk_struct(
        &mut self,
        value: &mut Value,
        keys: &[Key],
        path: &str,
        variant: Option<&str>,
        node: Option<&Value>,
    ) -> bool {
        let Value::Mapping(map) = value else {
            return self.mismatch(path, "a mapping", value);
        };
        let mut remove = Vec::new();
        let mut present = HashSet::new();
        let mut complete = true;
        for (name, child) in map.iter_mut() {
            let Some(name_text) = name.as_str() else {
                self.problems
                    .push(path, format!("keys must be text, got {}", describe(name)));
                remove.push(name.clone());
                continue;
            };
            let child_path = join(path, name_text);
            let Some(key) = keys.iter().find(|k| k.name == name_text) else {
                let message = unknown_key(name_text, keys, variant);
                self.problems.push(child_path, message);
                remove.push(name.clone());
                continue;
            };
            let node_child = node.and_then(|n| n.get(name_text));
            if let Some(refusal) = self.role.refusal(key.scope) {
                let problem = match self.role {
                    Role::Operator => self.node_local_in_operator(child, node_child),
                    _ => Some(refusal.to_owned()),
                };
                if let Some(problem) = problem {
                    self.problems.push(child_path, problem);
                }
                // Agreeing or not, the value is dropped: node-local values come from the node
                // file alone.
                remove.push(name.clone());
                continue;
            }
            // `key:` with nothing after it means "default", as in Kubernetes manifests.
            if child.is_null() {
                remove.push(name.clone());
                continue;
            }
            present.insert(key.name);
            if !self.walk(child, &key.shape, &child_path, node_child) {
                remove.push(name.clone());
                complete &= !key.required;
            }
        }
        for name in remove {
            map.remove(&name);
        }
        for key in keys {
            if demanded(key, self.role) && !present.contains(key.name) {
                self.problems
                    .push(join(path, key.name), "required key is missing");
                complete = false;
            }
        }
        complete
    }

    fn walk_tagged(
        &mut self,
        value: &mut Value,
        tag: &str,
        variants: &[Variant],
        path: &str,
        node: Option<&Value>,
    ) -> bool {
        let Value::Mapping(map) = value else {
            return self.mismatch(path, "a mapping", value);
        };
        let tag_path = join(path, tag);
        let names: Vec<&str> = variants.iter().map(|v| v.name).collect();
        let Some(tag_value) = map.remove(tag) else {
            self.problems.push(
                tag_path,
                format!("required key is missing (one of: {})", names.join(", ")),
            );
            return false;
        };
        let Some(chosen) = tag_value.as_str() else {
            return self.mismatch(
                &tag_path,
                &format!("one of: {}", names.join(", ")),
                &tag_value,
            );
        };
        let Some(variant) = variants.iter().find(|v| v.name == chosen) else {
            self.problems.push(tag_path, not_one_of(chosen, &names));
            return false;
        };
        if let Some(refusal) = self.role.refusal(variant.scope) {
            let problem = match self.role {
                Role::Operator => {
                    // The node file's `restart` replaces the operator's as a whole, so the
                    // whole mapping, method included, is what must agree.
                    let mut whole = map.clone();
                    whole.insert(Value::from(tag), tag_value.clone());
                    self.node_local_in_operator(&Value::Mapping(whole), node)
                }
                _ => Some(refusal.to_owned()),
            };
            let Some(problem) = problem else {
                // Agrees with the node file, whose value is used: dropped without a problem.
                return false;
            };
            // Point at the key that carries the node-local value when there is one.
            let carrier = variant
                .keys
                .iter()
                .find(|k| k.scope == variant.scope && map.contains_key(k.name));
            match carrier {
                Some(key) => self.problems.push(join(path, key.name), problem),
                None => self
                    .problems
                    .push(tag_path, format!("{chosen:?}: {problem}")),
            }
            return false;
        }
        let label = format!("{tag} {chosen:?}");
        let complete = self.walk_struct(value, variant.keys, path, Some(&label), node);
        if let Value::Mapping(map) = value {
            map.insert(Value::from(tag), tag_value);
        }
        complete
    }

    fn walk_list(
        &mut self,
        value: &mut Value,
        item: &Shape,
        partial: bool,
        path: &str,
        node: Option<&Value>,
    ) -> bool {
        let Value::Sequence(items) = value else {
            return self.mismatch(path, "a list", value);
        };
        let node_items = node.and_then(Value::as_sequence);
        let mut all_ok = true;
        for (i, entry) in items.iter_mut().enumerate() {
            let entry_path = index(path, i);
            // The node file names its runtime classes; its entry for this one is the one of the
            // same name, wherever it is in the list.
            let node_entry = entry
                .get("name")
                .and_then(|name| node_items?.iter().find(|n| n.get("name") == Some(name)));
            let ok = if entry.is_null() {
                self.problems.push(entry_path, "empty list entry");
                false
            } else {
                self.walk(entry, item, &entry_path, node_entry)
            };
            if !ok {
                all_ok = false;
                // Keeping the slot keeps the indexes of the later entries, which paths name.
                if partial {
                    *entry = Value::Null;
                }
            }
        }
        partial || all_ok
    }

    fn walk_dict(
        &mut self,
        value: &mut Value,
        key_check: Option<Check>,
        shape: &Shape,
        path: &str,
    ) -> bool {
        let Value::Mapping(map) = value else {
            return self.mismatch(path, "a mapping", value);
        };
        let mut remove = Vec::new();
        for (name, child) in map.iter_mut() {
            let Some(name_text) = name.as_str() else {
                self.problems
                    .push(path, format!("keys must be text, got {}", describe(name)));
                remove.push(name.clone());
                continue;
            };
            let child_path = join(path, name_text);
            let name_ok = match key_check.map(|check| check(name_text)) {
                Some(Err(message)) => {
                    self.problems.push(child_path.clone(), message);
                    false
                }
                _ => true,
            };
            if !(name_ok && self.walk(child, shape, &child_path, None)) {
                remove.push(name.clone());
            }
        }
        for name in remove {
            map.remove(&name);
        }
        true
    }

    fn walk_argv(&mut self, value: &mut Value, path: &str) -> bool {
        let Value::Sequence(items) = value else {
            return self.mismatch(path, "a list: [/absolute/program, args…]", value);
        };
        let mut argv = Vec::with_capacity(items.len());
        let mut all_text = true;
        for (i, item) in items.iter().enumerate() {
            match self.text(item, &index(path, i)) {
                Some(text) => argv.push(text.to_owned()),
                None => all_text = false,
            }
        }
        all_text && self.checked(super::values::argv(&argv), path)
    }

    /// Policy settings reach the policy as JSON: keys must be text and YAML tags have no meaning.
    fn walk_json(&mut self, value: &mut Value, path: &str) -> bool {
        match value {
            Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => true,
            Value::Sequence(items) => {
                let mut ok = true;
                for (i, item) in items.iter_mut().enumerate() {
                    ok &= self.walk_json(item, &index(path, i));
                }
                ok
            }
            Value::Mapping(map) => {
                let mut ok = true;
                for (name, child) in map.iter_mut() {
                    match name.as_str() {
                        Some(name_text) => ok &= self.walk_json(child, &join(path, name_text)),
                        None => {
                            self.problems
                                .push(path, format!("keys must be text, got {}", describe(name)));
                            ok = false;
                        }
                    }
                }
                ok
            }
            Value::Tagged(_) => self.mismatch(path, "plain YAML (no tags)", value),
        }
    }

    fn text<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        match value {
            Value::String(text) => Some(text),
            _ => {
                self.mismatch(path, "text", value);
                None
            }
        }
    }

    fn checked(&mut self, result: Result<(), String>, path: &str) -> bool {
        match result {
            Ok(()) => true,
            Err(message) => {
                self.problems.push(path, message);
                false
            }
        }
    }

    /// Reports a number or boolean where text was expected. The hint to quote it names the text
    /// only when that is exactly what was written and passes `check`: YAML keeps no digits of a
    /// float (`1.10` reads as 1.1) nor the spelling of an integer (`0x1F` is 31), and quoting
    /// `9464` does not make it an address.
    fn not_text(&mut self, path: &str, got: &Value, check: Check) -> bool {
        let mut message = format!("expected text, got {}", describe(got));
        let literal = match got {
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        };
        match (got, literal) {
            (_, Some(literal)) => match check(&literal) {
                Ok(()) => message.push_str(&format!(" (quote it as written, e.g. \"{literal}\")")),
                Err(why) => message.push_str(&format!("; as text, {why}")),
            },
            (Value::Number(n), None) => message.push_str(&format!(
                " (quote it exactly as meant: YAML read the digits as the number {n}, so \
                 trailing zeros are gone)"
            )),
            _ => {}
        }
        if path.is_empty() {
            message.push_str(" at the top of the file");
        }
        self.problems.push(path, message);
        false
    }

    /// Reports a value of the wrong type; always false, for use in boolean chains.
    fn mismatch(&mut self, path: &str, expected: &str, got: &Value) -> bool {
        if expected == "text" {
            return self.not_text(path, got, |_| Ok(()));
        }
        let mut message = format!("expected {expected}, got {}", describe(got));
        if path.is_empty() {
            message.push_str(" at the top of the file");
        }
        self.problems.push(path, message);
        false
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the text {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(tagged) => format!("a value tagged {}", tagged.tag),
    }
}

fn unknown_key(name: &str, keys: &[Key], variant: Option<&str>) -> String {
    let mut message = String::from("unknown key");
    if let Some(variant) = variant {
        message.push_str(&format!(" for {variant}"));
    }
    match suggest::closest(name, keys.iter().map(|k| k.name)) {
        Some(near) => message.push_str(&format!(" (did you mean {near:?}?)")),
        None if keys.is_empty() => message.push_str(" (it takes no other keys)"),
        None => {
            let known: Vec<&str> = keys.iter().map(|k| k.name).collect();
            message.push_str(&format!(" (known keys: {})", known.join(", ")));
        }
    }
    message
}

fn not_one_of(text: &str, names: &[&str]) -> String {
    let mut message = format!("{text:?} is not one of: {}", names.join(", "));
    if let Some(near) = suggest::closest(text, names.iter().copied()) {
        message.push_str(&format!(" (did you mean {near:?}?)"));
    }
    message
}

/// Whether `key` must be present in a file of `role`: required, allowed there, and (for a
/// mapping) holding a key that file must set. The node file may give a class's `artifacts` its
/// node-local `verify` without the operator's required `url`.
fn demanded(key: &Key, role: Role) -> bool {
    key.required
        && role.refusal(key.scope).is_none()
        && match &key.shape {
            Shape::Struct(keys) => keys.iter().any(|k| demanded(k, role)),
            _ => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::error::Problem;

    fn walk(yaml: &str, role: Role) -> (Value, Vec<String>) {
        let mut value: Value = serde_yaml::from_str(yaml).expect("test YAML");
        let mut problems = Problems::default();
        walk_document(&mut value, role, &mut problems);
        let lines = problems.into_vec().iter().map(Problem::to_string).collect();
        (value, lines)
    }

    #[test]
    fn unknown_keys_get_a_suggestion_and_are_removed() {
        let (value, problems) = walk(
            "runtimeClasses:\n- name: kata\n  artifact: {url: nvcr.io/x}\n  artifacts: {url: nvcr.io/x}\n",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            ["runtimeClasses[0].artifact: unknown key (did you mean \"artifacts\"?)"]
        );
        assert!(value["runtimeClasses"][0].get("artifact").is_none());
    }

    /// The hint to quote a value names it only when the text is exactly what was written and
    /// valid where it goes.
    #[test]
    fn quote_hints_never_change_the_value_or_suggest_an_invalid_one() {
        let (_, problems) = walk(
            "listen: 9464\nruntimeClasses:\n- name: k\n  provision: true\n  nodeSelector: {a: 1.10, b: true, c: 0x1F}\n  artifacts: {url: nvcr.io/x:1}\n",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            [
                "listen: expected text, got the number 9464; as text, \"9464\" is not an IP address and port (e.g. 127.0.0.1:9464 or [::]:9464)",
                "runtimeClasses[0].provision: expected one of: eager, onDemand, got true",
                "runtimeClasses[0].nodeSelector.a: expected text, got the number 1.1 (quote it exactly as meant: YAML read the digits as the number 1.1, so trailing zeros are gone)",
                "runtimeClasses[0].nodeSelector.b: expected text, got true (quote it as written, e.g. \"true\")",
                "runtimeClasses[0].nodeSelector.c: expected text, got the number 31 (quote it as written, e.g. \"31\")",
            ]
        );
    }

    #[test]
    fn unknown_key_without_a_near_miss_lists_the_known_ones() {
        let (_, problems) = walk("log: {colour: red}", Role::Trusted);
        assert_eq!(problems, ["log.colour: unknown key (known keys: format)"]);
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_how_to_fix_it() {
        let (_, problems) = walk(
            "nri: {pluginIdx: 50}\nlimits: {keepVersions: two}\nruntimeClasses: {}\n",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            [
                "nri.pluginIdx: expected text, got the number 50 (quote it as written, e.g. \"50\")",
                "limits.keepVersions: expected a whole number (0 or more), got the text \"two\"",
                "runtimeClasses: expected a list, got a mapping",
            ]
        );
    }

    #[test]
    fn a_top_level_list_is_reported_once() {
        let (value, problems) = walk("- a\n- b\n", Role::Trusted);
        assert_eq!(
            problems,
            ["expected a mapping, got a list at the top of the file"]
        );
        assert!(value.is_mapping());
    }

    #[test]
    fn missing_required_keys_are_reported_and_the_entry_is_set_aside() {
        let (value, problems) = walk(
            "runtimeClasses:\n- artifacts: {}\n- name: ok\n  artifacts: {url: nvcr.io/x}\n",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            [
                "runtimeClasses[0].artifacts.url: required key is missing",
                "runtimeClasses[0].name: required key is missing",
            ]
        );
        assert!(value["runtimeClasses"][0].is_null());
        assert_eq!(value["runtimeClasses"][1]["name"], "ok");
    }

    /// The operator file walked next to the node file `node` (itself walked first, as `load` does).
    fn walk_next_to(yaml: &str, node: &str) -> (Value, Vec<String>) {
        let mut node: Value = serde_yaml::from_str(node).expect("test YAML");
        let mut node_problems = Problems::default();
        walk_document(&mut node, Role::Node, &mut node_problems);
        assert!(node_problems.is_empty(), "the node file is valid");
        let mut value: Value = serde_yaml::from_str(yaml).expect("test YAML");
        let mut problems = Problems::default();
        walk_operator_document(&mut value, &node, &mut problems);
        let lines = problems.into_vec().iter().map(Problem::to_string).collect();
        (value, lines)
    }

    fn unset(path: &str) -> String {
        format!(
            "{path}: {NODE_LOCAL_IN_OPERATOR}; the node file does not set it ({NODE_LOCAL_FIX})"
        )
    }

    const NODE_LOCAL_KEYS: &str = "artifactsDir: /x\ngate: {timeout: 10s}\ncontainerd: {configPath: /c, restart: {method: command, command: [/bin/true]}}\n\
         runtimeClasses:\n- name: k\n  artifacts: {url: nvcr.io/x}\n  runtime: {runtimePath: /opt/kata/bin/shim}\n";

    #[test]
    fn node_local_keys_are_refused_in_the_operator_file() {
        let (_, problems) = walk(NODE_LOCAL_KEYS, Role::Operator);
        let refused = |path: &str| format!("{path}: {NODE_LOCAL_IN_OPERATOR} ({NODE_LOCAL_FIX})");
        assert_eq!(
            problems,
            [
                refused("artifactsDir"),
                refused("gate"),
                refused("containerd.configPath"),
                refused("containerd.restart.command"),
                refused("runtimeClasses[0].runtime.runtimePath"),
            ]
        );
        let (_, problems) = walk_next_to(NODE_LOCAL_KEYS, "{}");
        assert_eq!(
            problems,
            [
                unset("artifactsDir"),
                unset("gate"),
                unset("containerd.configPath"),
                unset("containerd.restart.command"),
                unset("runtimeClasses[0].runtime.runtimePath"),
            ]
        );
    }

    #[test]
    fn node_local_keys_the_node_file_sets_to_the_same_value_pass_and_are_dropped() {
        // The node file lists its classes in another order and sets more than the operator's.
        let node = "artifactsDir: /x\ngate: {timeout: 10s, dir: /g}\n\
                    containerd: {configPath: /c, restart: {method: command, command: [/bin/true], timeout: 30s}}\n\
                    runtimeClasses:\n- name: other\n- name: k\n  runtime: {runtimePath: /opt/kata/bin/shim}\n";
        let (value, problems) = walk_next_to(NODE_LOCAL_KEYS, node);
        assert_eq!(problems, Vec::<String>::new());
        assert!(value.get("artifactsDir").is_none(), "{value:?}");
        assert!(value.get("gate").is_none());
        assert!(value["containerd"].get("configPath").is_none());
        assert!(value["containerd"].get("restart").is_none());
        assert!(
            value["runtimeClasses"][0]["runtime"]
                .get("runtimePath")
                .is_none()
        );
        assert_eq!(value["runtimeClasses"][0]["name"], "k");
    }

    #[test]
    fn node_local_keys_the_node_file_sets_otherwise_are_refused_with_its_value() {
        let node = "artifactsDir: /y\ngate: {dir: /g}\ncontainerd: {restart: {method: systemd}}\n\
                    runtimeClasses:\n- name: k\n  runtime: {runtimePath: /usr/bin/shim}\n";
        let (_, problems) = walk_next_to(NODE_LOCAL_KEYS, node);
        let differs = |path: &str, node: &str| {
            format!(
                "{path}: {NODE_LOCAL_IN_OPERATOR}; the node file sets it to {node} ({NODE_LOCAL_FIX})"
            )
        };
        assert_eq!(
            problems,
            [
                differs("artifactsDir", "\"/y\""),
                differs("gate", "{\"dir\":\"/g\"}"),
                unset("containerd.configPath"),
                differs("containerd.restart.command", "{\"method\":\"systemd\"}"),
                differs("runtimeClasses[0].runtime.runtimePath", "\"/usr/bin/shim\""),
            ]
        );
        // A class the node file does not name sets nothing for it.
        let (_, problems) = walk_next_to(
            "runtimeClasses:\n- name: k\n  artifacts: {url: nvcr.io/x}\n  runtime: {adopt: true}\n",
            "runtimeClasses:\n- name: j\n  runtime: {adopt: true}\n",
        );
        assert_eq!(problems, [unset("runtimeClasses[0].runtime.adopt")]);
    }

    #[test]
    fn a_command_restart_without_its_command_is_still_refused_in_the_operator_file() {
        let (_, problems) = walk("containerd: {restart: {method: command}}", Role::Operator);
        assert_eq!(
            problems,
            [format!(
                "containerd.restart.method: \"command\": {NODE_LOCAL_IN_OPERATOR} ({NODE_LOCAL_FIX})"
            )]
        );
    }

    #[test]
    fn the_node_file_takes_only_node_local_keys_and_the_nodes_facts() {
        let (value, problems) = walk(
            "artifactsDir: /var/lib/kata\nlisten: 127.0.0.1:0\ncontainerd: {address: /run/k3s/containerd/containerd.sock, mode: inline}\n\
             log: {format: json}\nruntimeClasses:\n- name: k\n  provision: eager\n  runtime: {runtimePath: /opt/kata/bin/shim, runtimeType: io.containerd.kata.v2}\n",
            Role::Node,
        );
        assert_eq!(
            problems,
            [
                format!("containerd.mode: {SHARED_IN_NODE}"),
                format!("log: {SHARED_IN_NODE}"),
                format!("runtimeClasses[0].provision: {SHARED_IN_NODE}"),
            ]
        );
        assert_eq!(value["listen"], "127.0.0.1:0");
        // Which runtime a class runs is also the node's to say (the operator may name only
        // kata's).
        assert_eq!(
            value["runtimeClasses"][0]["runtime"]["runtimeType"],
            "io.containerd.kata.v2"
        );
        assert_eq!(
            value["containerd"]["address"],
            "/run/k3s/containerd/containerd.sock"
        );
    }

    #[test]
    fn restart_variants_are_checked_by_method() {
        let (_, problems) = walk(
            "containerd: {restart: {method: systemd, command: [/x]}}",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            [
                "containerd.restart.command: unknown key for method \"systemd\" (known keys: unit, timeout)"
            ]
        );
        let (_, problems) = walk("containerd: {restart: {method: System}}", Role::Trusted);
        assert_eq!(
            problems,
            [
                "containerd.restart.method: \"System\" is not one of: systemd, command, none (did you mean \"systemd\"?)"
            ]
        );
        let (_, problems) = walk("containerd: {restart: {unit: a.service}}", Role::Trusted);
        assert_eq!(
            problems,
            ["containerd.restart.method: required key is missing (one of: systemd, command, none)"]
        );
        let (_, problems) = walk(
            "containerd: {restart: {method: command, command: [systemctl, restart, containerd]}}",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            [
                "containerd.restart.command: the program \"systemctl\" must be an absolute path (it is run without a shell or PATH)"
            ]
        );
        let (_, problems) = walk(
            "containerd: {restart: {method: none, timeout: 1s}}",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            [
                "containerd.restart.timeout: unknown key for method \"none\" (it takes no other keys)"
            ]
        );
    }

    #[test]
    fn dict_keys_are_checked_and_quoted_in_paths() {
        let (_, problems) = walk(
            "runtimeClasses:\n- name: k\n  artifacts: {url: nvcr.io/x}\n  nodeSelector: {\"nvidia.com/gpu.present\": true, \"Bad Key\": x}\n",
            Role::Trusted,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            problems[0],
            "runtimeClasses[0].nodeSelector[\"nvidia.com/gpu.present\"]: expected text, got true (quote it as written, e.g. \"true\")"
        );
        assert!(problems[1].starts_with(
            "runtimeClasses[0].nodeSelector[\"Bad Key\"]: \"Bad Key\" is not a label key"
        ));
    }

    #[test]
    fn enums_suggest_the_right_spelling() {
        let (_, problems) = walk(
            "runtimeClasses:\n- name: k\n  provision: ondemand\n  artifacts: {url: nvcr.io/x}\n",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            [
                "runtimeClasses[0].provision: \"ondemand\" is not one of: eager, onDemand (did you mean \"onDemand\"?)"
            ]
        );
    }

    #[test]
    fn empty_values_mean_defaults() {
        let (value, problems) = walk("registries:\nlog:\n  format:\n", Role::Trusted);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(value.get("registries").is_none());
        assert!(value["log"].get("format").is_none());
    }

    #[test]
    fn sizes_take_text_or_numbers() {
        let (_, problems) = walk(
            "limits: {maxArtifactBytes: 1073741824}\npolicies: {limits: {memory: 8Gx}}\n",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            ["policies.limits.memory: \"8Gx\" is not a size (use e.g. 8Gi, 500Mi)"]
        );
    }

    #[test]
    fn policy_settings_must_be_json() {
        let (_, problems) = walk(
            "policies: {settings: {mirror: {from: nvcr.io, 1: x, list: [!custom a]}}}",
            Role::Trusted,
        );
        assert_eq!(
            problems,
            [
                "policies.settings.mirror: keys must be text, got the number 1",
                "policies.settings.mirror.list[0]: expected plain YAML (no tags), got a value tagged !custom",
            ]
        );
    }

    #[test]
    fn paths_quote_keys_that_are_not_plain_words() {
        assert_eq!(join("", "nri"), "nri");
        assert_eq!(join("nri", "pluginIdx"), "nri.pluginIdx");
        assert_eq!(join("a", "b.c/d"), "a[\"b.c/d\"]");
        assert_eq!(index("runtimeClasses", 2), "runtimeClasses[2]");
    }
}
