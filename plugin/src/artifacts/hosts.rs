//! containerd's registry host configuration (the `certs.d` layout): which endpoints serve a
//! registry, in which order, and how to reach each. We read the same files containerd does, so a
//! node's mirrors and private CAs apply to artifact pulls as they apply to image pulls.
//!
//! For registry `host:port`, the first existing directory among `<root>/host_port_`,
//! `<root>/host:port` and `<root>/_default`, root by root, is the registry's. In it:
//! - `hosts.toml`: `[host."<url>"]` tables, tried in file order, then the upstream (`server`,
//!   or the registry itself), which takes the file's top-level settings;
//! - without a `hosts.toml`, docker's layout: every `*.crt` is a CA for the upstream.

use std::io;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, TableLike, Value};

/// One place a pull may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]` contacted; credentials are looked up for it.
    pub host: String,
    /// Plain HTTP (an `http://` URL, or the upstream listed in `registries.insecure`).
    pub plain_http: bool,
    /// May serve blobs and manifests by digest.
    pub pull: bool,
    /// May resolve a tag to a digest.
    pub resolve: bool,
    /// Extra CAs (PEM files), absolute paths.
    pub ca_files: Vec<PathBuf>,
    pub skip_verify: bool,
    /// A `[host]` entry rather than the upstream.
    pub mirror: bool,
    /// Why we cannot use this endpoint, when we cannot (it is then skipped with a warning).
    pub unusable: Option<String>,
    /// containerd settings of this endpoint that we do not apply, for a warning.
    pub ignored: Vec<&'static str>,
}

impl Endpoint {
    /// The registry itself, as reached without any host configuration.
    pub fn upstream(registry: &str, plain_http: bool) -> Self {
        Self {
            host: registry.to_owned(),
            plain_http,
            pull: true,
            resolve: true,
            ca_files: Vec::new(),
            skip_verify: false,
            mirror: false,
            unusable: None,
            ignored: Vec::new(),
        }
    }

    /// What a log line or an error calls this endpoint.
    pub fn label(&self) -> String {
        let role = if self.mirror { "mirror" } else { "upstream" };
        format!("{role} {}", self.host)
    }
}

/// A registry's endpoints, in the order they are tried, and the file they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hosts {
    /// The `hosts.toml` (or the certificate directory) read; `None` when no directory applies.
    pub source: Option<PathBuf>,
    pub endpoints: Vec<Endpoint>,
}

/// Why a registry's host configuration cannot be used. Never quotes the file's text: a
/// `header` table there may hold a token.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("{}: cannot read it: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not valid TOML: line {line}: {why}", path.display())]
    Toml {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{}: {key}: {why}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        why: String,
    },
}

/// The endpoints for `registry` (`host[:port]`) under the certs directories `roots`.
/// `upstream_plain_http` is how the registry itself is reached when no `server` says otherwise
/// (`registries.insecure`).
pub(crate) fn lookup(
    roots: &[PathBuf],
    registry: &str,
    upstream_plain_http: bool,
) -> Result<Hosts, HostsError> {
    let Some(dir) = host_dir(roots, registry)? else {
        return Ok(Hosts {
            source: None,
            endpoints: vec![Endpoint::upstream(registry, upstream_plain_http)],
        });
    };
    let file = dir.join("hosts.toml");
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(HostsError::Read { path: file, source }),
    };
    // An empty or absent hosts.toml means docker's layout, as in containerd.
    if text.trim().is_empty() {
        let mut upstream = Endpoint::upstream(registry, upstream_plain_http);
        upstream.ca_files = docker_certs(&dir)?;
        return Ok(Hosts {
            source: Some(dir),
            endpoints: vec![upstream],
        });
    }
    let endpoints = parse(&file, &text, registry, upstream_plain_http)?;
    Ok(Hosts {
        source: Some(file),
        endpoints,
    })
}

/// The registry's directory: per root, `host_port_`, then `host:port`, then `_default`.
fn host_dir(roots: &[PathBuf], registry: &str) -> Result<Option<PathBuf>, HostsError> {
    let mut names = Vec::new();
    // containerd's spelling for file systems that do not allow `:` in names.
    if let Some((host, port)) = registry.rsplit_once(':')
        && !host.is_empty()
    {
        names.push(format!("{host}_{port}_"));
    }
    names.push(registry.to_owned());
    names.push("_default".to_owned());
    for root in roots {
        for name in &names {
            let dir = root.join(name);
            match std::fs::metadata(&dir) {
                Ok(_) => return Ok(Some(dir)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(HostsError::Read { path: dir, source }),
            }
        }
    }
    Ok(None)
}

/// Docker's layout: `*.crt` files are CAs. (`*.cert`/`*.key` client pairs are not supported.)
fn docker_certs(dir: &Path) -> Result<Vec<PathBuf>, HostsError> {
    let entries = std::fs::read_dir(dir).map_err(|source| HostsError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut cas: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "crt") && path.is_file())
        .collect();
    cas.sort();
    Ok(cas)
}

/// The endpoints a `hosts.toml` lists: its `[host]` tables in file order, then the upstream.
fn parse(
    file: &Path,
    text: &str,
    registry: &str,
    upstream_plain_http: bool,
) -> Result<Vec<Endpoint>, HostsError> {
    let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        HostsError::Toml {
            path: file.to_owned(),
            line,
            // The message only, never the snippet toml_edit quotes from the file.
            why: e.message().trim().to_owned(),
        }
    })?;
    let dir = file.parent().unwrap_or(Path::new("/"));
    let invalid = |key: &str, why: String| HostsError::Invalid {
        path: file.to_owned(),
        key: key.to_owned(),
        why,
    };
    let mut endpoints = Vec::new();
    if let Some(hosts) = doc.get("host") {
        let hosts = hosts
            .as_table_like()
            .ok_or_else(|| invalid("host", "must be a table of host URLs".into()))?;
        // toml_edit keeps the file's order, which is the order containerd tries them in.
        for (url, settings) in hosts.iter() {
            let key = format!("host.{url:?}");
            let settings = settings
                .as_table_like()
                .ok_or_else(|| invalid(&key, "must be a table".into()))?;
            let mut endpoint = endpoint(url, settings, dir)
                .map_err(|(sub, why)| invalid(&format!("{key}{sub}"), why))?;
            endpoint.mirror = !same_registry(&endpoint.host, registry);
            endpoints.push(endpoint);
        }
    }
    let root = doc.as_table();
    let mut upstream = match root.get("server") {
        Some(server) => {
            let server = server
                .as_str()
                .ok_or_else(|| invalid("server", "must be a string (a URL)".into()))?;
            endpoint(server, root, dir).map_err(|(sub, why)| {
                invalid(if sub.is_empty() { "server" } else { &sub[1..] }, why)
            })?
        }
        None => {
            let mut upstream = endpoint(registry, root, dir)
                .map_err(|(sub, why)| invalid(sub.trim_start_matches('.'), why))?;
            upstream.plain_http = upstream_plain_http;
            upstream
        }
    };
    upstream.mirror = !same_registry(&upstream.host, registry);
    endpoints.push(upstream);
    Ok(endpoints)
}

/// One endpoint from its URL and settings; an error names the offending sub-key.
fn endpoint(url: &str, settings: &dyn TableLike, dir: &Path) -> Result<Endpoint, (String, String)> {
    let bad = |sub: &str, why: &str| (format!(".{sub}"), why.to_owned());
    let (plain_http, rest) = match url.split_once("://") {
        Some(("http", rest)) => (true, rest),
        Some(("https", rest)) => (false, rest),
        Some((scheme, _)) => {
            return Err((
                String::new(),
                format!("scheme {scheme:?} is not http or https"),
            ));
        }
        // containerd's default for a URL without a scheme.
        None => (false, url),
    };
    let (host, path) = match rest.split_once('/') {
        Some((host, path)) => (host, path.trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err((String::new(), "the URL has no host".into()));
    }
    let override_path = match settings.get("override_path") {
        None => false,
        Some(item) => item
            .as_bool()
            .ok_or_else(|| bad("override_path", "must be true or false"))?,
    };
    // Our client addresses `<host>/v2/…` only: a path prefix cannot be honoured.
    let unusable = match (path, override_path) {
        ("" | "v2", _) => None,
        (path, _) => Some(format!(
            "the URL has the path /{path}, which kata-nri-manager cannot address (only <host>/v2)"
        )),
    };
    let (mut pull, mut resolve) = (true, true);
    if let Some(item) = settings.get("capabilities") {
        let list = strings(item).ok_or_else(|| {
            bad(
                "capabilities",
                "must be a list of \"pull\", \"resolve\", \"push\"",
            )
        })?;
        (pull, resolve) = (false, false);
        for capability in list {
            match capability.to_ascii_lowercase().as_str() {
                "pull" => pull = true,
                "resolve" => resolve = true,
                // Not used by a pull, but valid for containerd.
                "push" | "referrers" => {}
                other => {
                    return Err(bad(
                        "capabilities",
                        &format!("unknown capability {other:?}"),
                    ));
                }
            }
        }
    }
    let ca_files = match settings.get("ca") {
        None => Vec::new(),
        Some(item) => strings(item)
            .ok_or_else(|| bad("ca", "must be a path or a list of paths"))?
            .into_iter()
            .map(|path| dir.join(path))
            .collect(),
    };
    let skip_verify = match settings.get("skip_verify") {
        None => false,
        Some(item) => item
            .as_bool()
            .ok_or_else(|| bad("skip_verify", "must be true or false"))?,
    };
    let ignored = ["header", "client", "dial_timeout"]
        .into_iter()
        .filter(|key| settings.contains_key(key))
        .collect();
    Ok(Endpoint {
        host: host.to_ascii_lowercase(),
        plain_http,
        pull,
        resolve,
        ca_files,
        skip_verify,
        mirror: false,
        unusable,
        ignored,
    })
}

/// A string, or an array of strings.
fn strings(item: &Item) -> Option<Vec<String>> {
    let value = item.as_value()?;
    match value {
        Value::String(s) => Some(vec![s.value().clone()]),
        Value::Array(array) => array
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// Whether `host` is the registry itself (docker.io is served by registry-1.docker.io).
fn same_registry(host: &str, registry: &str) -> bool {
    super::auth::canonical_host(host) == super::auth::canonical_host(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn write(root: &Path, dir: &str, text: &str) -> PathBuf {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("hosts.toml");
        std::fs::write(&file, text).expect("write");
        file
    }

    fn hosts(root: &Path, registry: &str) -> Hosts {
        lookup(&[root.to_owned()], registry, false).expect("hosts")
    }

    #[test]
    fn mirrors_come_in_file_order_then_the_upstream() {
        let root = certs();
        write(
            root.path(),
            "registry.example:5000",
            r#"
server = "https://registry.example:5000"

[host."https://zz-mirror.example"]
  capabilities = ["pull", "resolve"]

[host."http://aa-mirror.example:5001"]
  capabilities = ["pull"]
  [host."http://aa-mirror.example:5001".header]
    x-custom = "1"

[host."https://mm-mirror.example"]
"#,
        );
        let hosts = hosts(root.path(), "registry.example:5000");
        let got: Vec<(&str, bool, bool, bool, bool)> = hosts
            .endpoints
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http, e.pull, e.resolve, e.mirror))
            .collect();
        assert_eq!(
            got,
            [
                ("zz-mirror.example", false, true, true, true),
                ("aa-mirror.example:5001", true, true, false, true),
                ("mm-mirror.example", false, true, true, true),
                ("registry.example:5000", false, true, true, false),
            ]
        );
        assert_eq!(hosts.endpoints[1].ignored, ["header"]);
        assert_eq!(
            hosts.source,
            Some(root.path().join("registry.example:5000/hosts.toml"))
        );
    }

    #[test]
    fn ca_paths_are_relative_to_the_file_and_settings_of_the_top_level_go_to_the_upstream() {
        let root = certs();
        write(
            root.path(),
            "r.example",
            r#"
ca = "upstream-ca.pem"
skip_verify = true

[host."https://m.example:443"]
  ca = ["m-ca.pem", "/etc/pki/other.pem"]
"#,
        );
        let hosts = hosts(root.path(), "r.example");
        let dir = root.path().join("r.example");
        assert_eq!(
            hosts.endpoints[0].ca_files,
            [dir.join("m-ca.pem"), PathBuf::from("/etc/pki/other.pem")]
        );
        assert!(!hosts.endpoints[0].skip_verify);
        let upstream = &hosts.endpoints[1];
        assert_eq!(upstream.host, "r.example");
        assert_eq!(upstream.ca_files, [dir.join("upstream-ca.pem")]);
        assert!(upstream.skip_verify && !upstream.mirror);
    }

    #[test]
    fn the_port_spelling_then_the_exact_name_then_default() {
        let root = certs();
        write(
            root.path(),
            "_default",
            "[host.\"https://default.example\"]\n",
        );
        assert_eq!(
            hosts(root.path(), "any.example:5000").endpoints[0].host,
            "default.example"
        );
        write(
            root.path(),
            "any.example:5000",
            "[host.\"https://exact.example\"]\n",
        );
        assert_eq!(
            hosts(root.path(), "any.example:5000").endpoints[0].host,
            "exact.example"
        );
        write(
            root.path(),
            "any.example_5000_",
            "[host.\"https://port.example\"]\n",
        );
        assert_eq!(
            hosts(root.path(), "any.example:5000").endpoints[0].host,
            "port.example"
        );
    }

    #[test]
    fn roots_are_searched_in_order_and_nothing_means_the_registry_alone() {
        let (first, second) = (certs(), certs());
        write(
            second.path(),
            "r.example",
            "[host.\"https://m2.example\"]\n",
        );
        let roots = [first.path().to_owned(), second.path().to_owned()];
        let found = lookup(&roots, "r.example", false).expect("hosts");
        assert_eq!(found.endpoints[0].host, "m2.example");

        let none = lookup(&roots, "other.example:5000", true).expect("hosts");
        assert_eq!(none.source, None);
        assert_eq!(
            none.endpoints,
            [Endpoint::upstream("other.example:5000", true)]
        );
    }

    #[test]
    fn without_hosts_toml_crt_files_are_upstream_cas() {
        let root = certs();
        let dir = root.path().join("r.example:5000");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for name in ["b.crt", "a.crt", "client.cert", "client.key"] {
            std::fs::write(dir.join(name), "x").expect("write");
        }
        let hosts = lookup(&[root.path().to_owned()], "r.example:5000", true).expect("hosts");
        assert_eq!(hosts.endpoints.len(), 1);
        assert_eq!(
            hosts.endpoints[0].ca_files,
            [dir.join("a.crt"), dir.join("b.crt")]
        );
        assert!(
            hosts.endpoints[0].plain_http,
            "registries.insecure still applies"
        );
    }

    #[test]
    fn a_server_other_than_the_registry_is_a_mirror_and_docker_io_is_not() {
        let root = certs();
        write(
            root.path(),
            "docker.io",
            "server = \"https://registry-1.docker.io\"\n",
        );
        let hub = hosts(root.path(), "docker.io");
        assert_eq!(hub.endpoints.len(), 1);
        assert!(!hub.endpoints[0].mirror);
        write(
            root.path(),
            "r.example",
            "server = \"http://proxy.example:8080\"\n",
        );
        let proxied = hosts(root.path(), "r.example");
        assert!(proxied.endpoints[0].mirror && proxied.endpoints[0].plain_http);
    }

    #[test]
    fn a_path_prefix_is_unusable_and_v2_is_fine() {
        let root = certs();
        write(
            root.path(),
            "r.example",
            "[host.\"https://a.example/v2\"]\n[host.\"https://b.example/prefix\"]\n  override_path = true\n",
        );
        let hosts = hosts(root.path(), "r.example");
        assert_eq!(hosts.endpoints[0].unusable, None);
        assert!(
            hosts.endpoints[1]
                .unusable
                .as_deref()
                .is_some_and(|why| why.contains("/prefix")),
            "{:?}",
            hosts.endpoints[1]
        );
    }

    #[test]
    fn bad_files_are_errors_that_name_the_file_and_never_quote_it() {
        let root = certs();
        let file = write(
            root.path(),
            "r.example",
            "[host.\"https://m.example\"]\n  header = { authorization = \"Bearer hunter2\" \n",
        );
        let error = lookup(&[root.path().to_owned()], "r.example", false)
            .expect_err("bad toml")
            .to_string();
        assert!(error.starts_with(&file.display().to_string()), "{error}");
        assert!(error.contains("line 2"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");

        write(
            root.path(),
            "r.example",
            "[host.\"https://m.example\"]\n  capabilities = [\"pull\", \"fly\"]\n",
        );
        let error = lookup(&[root.path().to_owned()], "r.example", false)
            .expect_err("unknown capability")
            .to_string();
        assert!(
            error.contains("host.\"https://m.example\".capabilities: unknown capability \"fly\""),
            "{error}"
        );

        write(root.path(), "r.example", "skip_verify = \"yes\"\n");
        let error = lookup(&[root.path().to_owned()], "r.example", false)
            .expect_err("not a bool")
            .to_string();
        assert!(
            error.contains("skip_verify: must be true or false"),
            "{error}"
        );

        write(root.path(), "r.example", "[host.\"ftp://m.example\"]\n");
        let error = lookup(&[root.path().to_owned()], "r.example", false)
            .expect_err("scheme")
            .to_string();
        assert!(error.contains("\"ftp\""), "{error}");
    }
}
