//! The runtime options containerd hands a shim: a `google.protobuf.Any`. For a kata runtime type
//! containerd's CRI builds kata's `runtimeoptions.v1.Options { type_url = 1; config_path = 2;
//! config_body = 3; }` (containerd `api/types/runtimeoptions/v1/api.proto`); runc's shim only
//! understands `containerd.runc.v1.Options` (`api/types/runc/options/oci.proto`).

use anyhow::{Context, Result};
use serde::Serialize;

use crate::pb;

/// What kata would read out of the options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KataOptions {
    /// The `Any`'s type URL, as containerd sent it.
    pub type_url: String,
    pub config_path: Option<String>,
    /// containerd 2.x sends the stanza's whole `options` table here when it has no `ConfigPath`.
    pub config_body: Option<String>,
}

/// Decodes a marshalled `Any`; `None` for no bytes (no options were sent).
pub fn decode(any: &[u8]) -> Result<Option<KataOptions>> {
    if any.is_empty() {
        return Ok(None);
    }
    let type_url = pb::string(any, 1)?.context("runtime options without a type URL")?;
    let mut out = KataOptions {
        type_url: type_url.clone(),
        ..KataOptions::default()
    };
    // Only kata's type carries a configuration; runc's (or any other) has none kata would read.
    if type_url.ends_with("runtimeoptions.v1.Options") {
        let value = pb::bytes(any, 2)?.unwrap_or_default();
        out.config_path = pb::string(&value, 2)?.filter(|s| !s.is_empty());
        out.config_body = pb::string(&value, 3)?.filter(|s| !s.is_empty());
    }
    Ok(Some(out))
}

/// runc's options for the sandbox: the harness's runc root, cgroupfs, the `runc` on PATH.
pub fn runc_options(root: Option<&str>) -> Vec<u8> {
    let mut value = Vec::new();
    if let Some(root) = root {
        pb::put_bytes(&mut value, 7, root.as_bytes());
    }
    let mut any = Vec::new();
    pb::put_bytes(&mut any, 1, b"containerd.runc.v1.Options");
    pb::put_bytes(&mut any, 2, &value);
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 57 bytes containerd 2.1 and 1.7 write for `ConfigPath = "/tmp/kx/configuration.toml"`.
    fn kata_any(path: &str) -> Vec<u8> {
        let mut value = Vec::new();
        pb::put_bytes(&mut value, 2, path.as_bytes());
        let mut any = Vec::new();
        pb::put_bytes(&mut any, 1, b"runtimeoptions.v1.Options");
        pb::put_bytes(&mut any, 2, &value);
        any
    }

    #[test]
    fn kata_options_carry_the_config_path() {
        let any = kata_any("/tmp/kx/configuration.toml");
        assert_eq!(any.len(), 57);
        let o = decode(&any).unwrap().unwrap();
        assert_eq!(o.config_path.as_deref(), Some("/tmp/kx/configuration.toml"));
        assert_eq!(o.config_body, None);
    }

    #[test]
    fn runc_options_have_no_config_path() {
        let o = decode(&runc_options(Some("/r"))).unwrap().unwrap();
        assert_eq!(o.type_url, "containerd.runc.v1.Options");
        assert_eq!(o.config_path, None);
        assert_eq!(decode(&[]).unwrap(), None);
    }
}
