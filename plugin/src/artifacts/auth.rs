//! Registry credentials from a docker config: a mounted Kubernetes secret
//! (`<pullSecretsDir>/<name>/.dockerconfigjson`) or a docker `config.json`, matched to the
//! registry as docker does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::secret::Secret;

/// What to present to a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic {
        username: String,
        password: Secret,
    },
    /// A registry token used as is (`registrytoken` in a docker config).
    Bearer(Secret),
}

/// Why a docker config could not be used. The text never contains credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read it: {0}")]
    Read(String),
    /// Neither `.dockerconfigjson` nor `config.json` is in the secret's directory: the Secret is
    /// not mounted (or not synced yet), which says more than "no such file".
    #[error(
        "no such file (nor a config.json beside it): mount the kubernetes.io/dockerconfigjson \
         Secret there, at <pullSecretsDir>/<pullSecret>/, or remove artifacts.pullSecret if the \
         registry needs no credentials"
    )]
    Missing,
    #[error("not a docker config (JSON with an `auths` map): {0}")]
    Parse(String),
    #[error("the entry for {0} has an `auth` field that is not base64 of user:password")]
    BadAuthField(String),
    #[error("the secret name is not a plain name")]
    BadName,
}

/// The file a `pullSecret` names: `<dir>/<name>/.dockerconfigjson` (a mounted
/// `kubernetes.io/dockerconfigjson` Secret), else `<dir>/<name>/config.json`.
pub fn secret_file(pull_secrets_dir: &Path, name: &str) -> Result<PathBuf, AuthFileError> {
    // The name comes from the operator config; it must not walk out of pullSecretsDir.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(AuthFileError::BadName);
    }
    let dir = pull_secrets_dir.join(name);
    let k8s = dir.join(".dockerconfigjson");
    if k8s.exists() {
        return Ok(k8s);
    }
    let docker = dir.join("config.json");
    if docker.exists() {
        return Ok(docker);
    }
    Ok(k8s)
}

/// The `auths` of a docker config (or the older `.dockercfg` shape without `auths`).
#[derive(Debug, Default)]
pub struct DockerConfig {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<Secret>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    registrytoken: Option<Secret>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

impl DockerConfig {
    pub fn read(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AuthFileError::Missing,
            _ => AuthFileError::Read(e.to_string()),
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &[u8]) -> Result<Self, AuthFileError> {
        // serde_json's messages quote no input, only positions, so they are safe to show.
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| AuthFileError::Parse(e.to_string()))?;
        let auths = match value.get("auths") {
            Some(auths) => auths.clone(),
            None => value,
        };
        let entries: BTreeMap<String, Entry> = serde_json::from_value(auths)
            .map_err(|_| AuthFileError::Parse("`auths` is not a map of registries".into()))?;
        Ok(Self { entries })
    }

    /// Credentials for `registry` (`host[:port]`), or `None` when no entry matches.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>, AuthFileError> {
        let Some((key, entry)) = self.find(registry) else {
            return Ok(None);
        };
        if let Some(token) = &entry.registrytoken {
            return Ok(Some(Credentials::Bearer(token.clone())));
        }
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials::Basic {
                username: username.clone(),
                password: password.clone(),
            }));
        }
        match &entry.auth {
            Some(auth) => decode_auth(auth)
                .map(Some)
                .ok_or_else(|| AuthFileError::BadAuthField(key.to_owned())),
            None => Ok(None),
        }
    }

    /// Docker's order: the exact `host:port`, then an entry without a port for the same host.
    fn find(&self, registry: &str) -> Option<(&str, &Entry)> {
        let wanted = canonical_host(registry);
        let (wanted_host, wanted_port) = split_port(&wanted);
        let mut fallback = None;
        for (key, entry) in &self.entries {
            let candidate = canonical_host(key);
            if candidate == wanted {
                return Some((key, entry));
            }
            let (host, port) = split_port(&candidate);
            if port.is_none() && wanted_port.is_some() && host == wanted_host {
                fallback.get_or_insert((key.as_str(), entry));
            }
        }
        fallback
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `HTTP://Reg:5000/x` → `reg:5000`.
pub fn canonical_host(key: &str) -> String {
    let key = key.trim();
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".into(),
        _ => host,
    }
}

/// `host:port` → (`host`, Some(`port`)); IPv6 literals keep their brackets.
fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') =>
        {
            (h, Some(p))
        }
        _ => (host, None),
    }
}

fn decode_auth(auth: &Secret) -> Option<Credentials> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.expose().trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (username, password) = text.split_once(':')?;
    Some(Credentials::Basic {
        username: username.to_owned(),
        password: Secret::new(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> Credentials {
        Credentials::Basic {
            username: user.into(),
            password: Secret::new(pass),
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn matches_hosts_as_docker_does() {
        let config = DockerConfig::parse(
            format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "reg.example:5000": {{"username": "port", "password": "p1"}},
                    "reg.example": {{"username": "noport", "password": "p2"}},
                    "http://other.example/path": {{"auth": "{}"}}
                }}}}"#,
                b64("hub:hubpass"),
                b64("o:op")
            )
            .as_bytes(),
        )
        .expect("parse");
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(
                config.lookup(hub).expect("ok"),
                Some(basic("hub", "hubpass"))
            );
        }
        assert_eq!(
            config.lookup("reg.example:5000").expect("ok"),
            Some(basic("port", "p1"))
        );
        assert_eq!(
            config.lookup("reg.example").expect("ok"),
            Some(basic("noport", "p2"))
        );
        // No entry for port 6000: the entry without a port applies.
        assert_eq!(
            config.lookup("reg.example:6000").expect("ok"),
            Some(basic("noport", "p2"))
        );
        assert_eq!(
            config.lookup("OTHER.example").expect("ok"),
            Some(basic("o", "op"))
        );
        assert_eq!(config.lookup("nope.example").expect("ok"), None);
    }

    #[test]
    fn an_entry_with_a_port_does_not_match_another_port() {
        let config =
            DockerConfig::parse(br#"{"auths": {"r:5000": {"username": "u", "password": "p"}}}"#)
                .expect("parse");
        assert_eq!(config.lookup("r:5001").expect("ok"), None);
        assert_eq!(config.lookup("r").expect("ok"), None);
    }

    #[test]
    fn reads_legacy_dockercfg_and_tokens() {
        let config = DockerConfig::parse(
            br#"{"r:1": {"registrytoken": "tok"}, "r:2": {"username": "u", "password": "p"}}"#,
        )
        .expect("parse");
        assert_eq!(
            config.lookup("r:1").expect("ok"),
            Some(Credentials::Bearer(Secret::new("tok")))
        );
        assert_eq!(config.lookup("r:2").expect("ok"), Some(basic("u", "p")));
    }

    #[test]
    fn errors_never_contain_the_secret() {
        let config = DockerConfig::parse(br#"{"auths": {"r": {"auth": "hunter2-not-base64!"}}}"#)
            .expect("parse");
        let error = config.lookup("r").expect_err("bad auth");
        assert!(!format!("{error} {error:?}").contains("hunter2"));
        let error =
            DockerConfig::parse(br#"{"auths": {"r": {"auth": hunter2}}}"#).expect_err("not json");
        assert!(!format!("{error} {error:?}").contains("hunter2"));
        let config = DockerConfig::parse(
            format!(
                r#"{{"auths": {{"r": {{"auth": "{}"}}}}}}"#,
                b64("u:hunter2")
            )
            .as_bytes(),
        )
        .expect("parse");
        assert!(!format!("{config:?} {:?}", config.lookup("r")).contains("hunter2"));
    }

    #[test]
    fn canonicalizes_keys() {
        assert_eq!(
            canonical_host("https://Reg.Example:443/v2/"),
            "reg.example:443"
        );
        assert_eq!(canonical_host("registry-1.docker.io"), "docker.io");
        assert_eq!(split_port("[::1]:5000"), ("[::1]", Some("5000")));
        assert_eq!(split_port("host"), ("host", None));
    }

    #[test]
    fn a_missing_secret_says_to_mount_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = secret_file(dir.path(), "my-pull-secret").expect("name");
        assert_eq!(path, dir.path().join("my-pull-secret/.dockerconfigjson"));
        let error = DockerConfig::read(&path).expect_err("missing");
        assert_eq!(error, AuthFileError::Missing);
        assert!(
            error
                .to_string()
                .contains("mount the kubernetes.io/dockerconfigjson Secret there"),
            "{error}"
        );
        // Other read failures keep the system's reason.
        std::fs::create_dir_all(&path).expect("a directory where the file should be");
        assert!(matches!(
            DockerConfig::read(&path),
            Err(AuthFileError::Read(_))
        ));
    }

    #[test]
    fn secret_names_stay_inside_the_directory() {
        let dir = Path::new("/etc/kata-nri-manager/pull-secrets");
        assert_eq!(secret_file(dir, "../x"), Err(AuthFileError::BadName));
        assert_eq!(secret_file(dir, ".."), Err(AuthFileError::BadName));
        assert_eq!(
            secret_file(dir, "my-secret").expect("ok"),
            dir.join("my-secret/.dockerconfigjson")
        );
    }
}
