//! A real OCI registry (CNCF distribution's `docker-registry`) on loopback for the artifact
//! tests, plain HTTP or TLS with htpasswd basic auth, and `oras` to push to it.
//!
//! The registry's access log (one line per request) tells tests which blobs were fetched, and
//! its storage directory lets them tamper with blobs behind its back: distribution 2.8 serves a
//! blob's `data` file as it is on disk, under the digest it was pushed with
//! (`Docker-Content-Digest`), without checking it again.
//!
//! Cosign signatures (see [`crate::cosign`]): [`Registry::signature_manifest`] reads one,
//! [`Registry::put_signature_manifest`] and [`Registry::copy_signature`] replace or forge one,
//! [`Registry::tamper_signature_payload`] edits its payload in storage.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Deps;
use crate::cosign::{SIMPLE_SIGNING_MEDIA_TYPE, signature_tag};
use crate::token::TokenService;

/// The fixed creation time passed to `oras push`, so that the same files give the same digest.
pub const CREATED: &str = "2024-01-01T00:00:00Z";

/// How a registry is started.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate from a test CA (see [`Registry::ca_file`]).
    pub tls: bool,
    /// Require basic auth with this user and password (htpasswd, bcrypt).
    pub basic_auth: Option<(String, String)>,
    /// Require tokens from a token service instead (see [`crate::token`]).
    pub token_auth: Option<TokenAuth>,
    /// With `tls`: serve a self-signed certificate made as Docker's documentation shows
    /// (`openssl req -x509 … -addext subjectAltName=<this>`, which OpenSSL marks `CA:TRUE`)
    /// instead of one issued by a test CA; [`Registry::ca_file`] is then that certificate.
    pub self_signed: Option<String>,
    /// A pull-through cache of the registry at this URL (`proxy.remoteurl`): it fetches what it
    /// lacks from there and keeps it. Such a registry takes no pushes.
    pub proxy_remote: Option<String>,
}

/// `auth: token` for a registry: the configuration section and the account `oras` pushes with.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub section: String,
    pub pusher: (String, String),
}

impl RegistryOptions {
    pub fn plain() -> Self {
        Self::default()
    }

    pub fn tls_with_auth(user: &str, password: &str) -> Self {
        Self {
            tls: true,
            basic_auth: Some((user.into(), password.into())),
            ..Self::default()
        }
    }

    /// TLS with a self-signed `CA:TRUE` certificate for `subject_alt_name` (e.g.
    /// `IP:127.0.0.1`), and basic auth.
    pub fn self_signed_with_auth(subject_alt_name: &str, user: &str, password: &str) -> Self {
        Self {
            self_signed: Some(subject_alt_name.into()),
            ..Self::tls_with_auth(user, password)
        }
    }

    /// Plain HTTP, tokens from `service`; `oras` pushes as the service's admin account
    /// `user`/`password`.
    pub fn plain_with_tokens(service: &TokenService, user: &str, password: &str) -> Self {
        Self {
            tls: false,
            basic_auth: None,
            token_auth: Some(TokenAuth {
                section: service.registry_auth(),
                pusher: (user.into(), password.into()),
            }),
            ..Self::default()
        }
    }
}

/// A running `docker-registry serve` on `127.0.0.1:<free port>`. Killed on drop.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    options: RegistryOptions,
    registry_bin: PathBuf,
    oras_bin: PathBuf,
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn run(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A CA and a server certificate for 127.0.0.1 signed by it (a `CA:FALSE` leaf; for a
/// self-signed `CA:TRUE` one see [`self_signed_certificate`]).
fn make_certificates(dir: &Path) -> Result<()> {
    let p = |name: &str| dir.join(name).display().to_string();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=knm test CA",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.pem"),
    ]))?;
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]))?;
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )?;
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("server.pem"),
    ]))?;
    Ok(())
}

/// A self-signed certificate for `subject_alt_name` as Docker's documentation makes one for a
/// registry: `openssl req -x509` with the default extensions, so `basicConstraints=CA:TRUE`.
pub fn self_signed_certificate(key: &Path, cert: &Path, subject_alt_name: &str) -> Result<()> {
    let key = key.display().to_string();
    let cert = cert.display().to_string();
    let san = format!("subjectAltName={subject_alt_name}");
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &cert,
        "-days",
        "1",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        &san,
    ]))?;
    Ok(())
}

impl Registry {
    pub fn start(deps: &Deps, options: RegistryOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("knm-registry-").tempdir()?;
        // Rewritten with each port tried (see below).
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:PORT\n",
            dir.path().join("storage").display()
        );
        if options.tls {
            match &options.self_signed {
                Some(subject_alt_name) => {
                    self_signed_certificate(
                        &dir.path().join("server.key"),
                        &dir.path().join("server.pem"),
                        subject_alt_name,
                    )?;
                    fs::copy(dir.path().join("server.pem"), dir.path().join("ca.pem"))?;
                }
                None => make_certificates(dir.path())?,
            }
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("server.pem").display(),
                dir.path().join("server.key").display()
            ));
        }
        if let Some((user, password)) = &options.basic_auth {
            let line = run(Command::new(&deps.htpasswd).args(["-Bbn", user, password]))?;
            fs::write(dir.path().join("htpasswd"), line)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: knm-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        if let Some(token) = &options.token_auth {
            config.push_str(&token.section);
        }
        if let Some(remote) = &options.proxy_remote {
            config.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
        }
        let mut registry = Self {
            child: None,
            dir,
            port: 0,
            options,
            registry_bin: deps.registry.clone(),
            oras_bin: deps.oras.clone(),
        };
        // A free port can be taken by another test between our probe and the registry's bind
        // (then the registry exits, and something else answers on the port): try another.
        let mut last = None;
        for _ in 0..5 {
            registry.port = free_port()?;
            fs::write(
                registry.dir.path().join("config.yml"),
                config.replace("127.0.0.1:PORT", &format!("127.0.0.1:{}", registry.port)),
            )?;
            match registry.spawn() {
                Ok(()) => return Ok(registry),
                Err(e) => {
                    registry.kill();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("registry not started")))
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(&self.registry_bin)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ours listens when its log says so and it still runs: a connect alone could reach
        // whoever else took the port.
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        loop {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                bail!("registry exited on port {}: {}", self.port, self.log());
            }
            if self.log().contains(&listening)
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("registry did not listen on {}: {}", self.port, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the registry's certificate (TLS registries only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's log so far (access log included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Successful `GET /v2/<repo>/blobs/<digest>` requests in the access log, except `cosign`'s
    /// (a test signing or verifying with it).
    pub fn blob_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .filter(|l| !l.contains("\"cosign/"))
            .filter(|l| l.contains("\" 200 ") || l.contains("\" 206 "))
            .count()
    }

    /// Manifest requests (GET or HEAD) in the access log, except `oras`'s own (pushes check
    /// for existing manifests) and `cosign`'s.
    pub fn manifest_requests(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(" /v2/") && l.contains("/manifests/"))
            .filter(|l| !l.contains("\"oras/") && !l.contains("\"cosign/"))
            .filter(|l| l.contains("\"GET ") || l.contains("\"HEAD "))
            .count()
    }

    /// Stops the registry at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }

    /// Runs `oras` against this registry (plain HTTP or its CA, and its credentials) in `cwd`.
    pub fn oras(&self, cwd: &Path, args: &[&str]) -> Result<String> {
        let mut command = Command::new(&self.oras_bin);
        command.current_dir(cwd).args(args);
        // Never write ~/.docker/config.json.
        command
            .arg("--registry-config")
            .arg(self.dir.path().join("oras-auth.json"));
        if self.options.tls {
            command.arg("--ca-file").arg(self.ca_file());
        } else {
            command.arg("--plain-http");
        }
        let pusher = self.options.basic_auth.as_ref().or(self
            .options
            .token_auth
            .as_ref()
            .map(|token| &token.pusher));
        if let Some((user, password)) = pusher {
            command.args(["-u", user, "-p", password]);
        }
        run(&mut command)
    }

    /// Pushes files as an artifact (`oras push`, one layer per file, titled by its name), with a
    /// fixed creation time; returns the manifest digest.
    pub fn push_files(&self, repo_tag: &str, files: &[(&str, &[u8])]) -> Result<String> {
        self.push_annotated(repo_tag, files, &[])
    }

    /// [`push_files`](Self::push_files) with manifest annotations (`key=value`).
    pub fn push_annotated(
        &self,
        repo_tag: &str,
        files: &[(&str, &[u8])],
        annotations: &[&str],
    ) -> Result<String> {
        let work = tempfile::tempdir()?;
        let mut names = Vec::new();
        for (name, content) in files {
            let path = work.path().join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&path, content)?;
            names.push(name.to_string());
        }
        let target = format!("{}/{repo_tag}", self.host());
        let annotation = format!("org.opencontainers.image.created={CREATED}");
        let mut args = vec!["push", &target, "--annotation", &annotation];
        for extra in annotations {
            args.extend(["--annotation", extra]);
        }
        args.extend(names.iter().map(String::as_str));
        let out = self.oras(work.path(), &args)?;
        digest_in(&out).with_context(|| format!("no digest in oras output: {out}"))
    }

    /// Uploads one blob; returns its digest and size.
    pub fn push_blob(&self, repo: &str, content: &[u8]) -> Result<(String, u64)> {
        let work = tempfile::tempdir()?;
        let path = work.path().join("blob");
        fs::write(&path, content)?;
        let target = format!("{}/{repo}", self.host());
        let out = self.oras(work.path(), &["blob", "push", &target, "blob"])?;
        let digest = digest_in(&out).with_context(|| format!("no digest in oras output: {out}"))?;
        Ok((digest, content.len() as u64))
    }

    /// Pushes a manifest written by the test (any layers it likes); returns its digest.
    pub fn push_manifest(&self, repo_tag: &str, manifest: &serde_json::Value) -> Result<String> {
        let work = tempfile::tempdir()?;
        fs::write(
            work.path().join("manifest.json"),
            serde_json::to_vec(manifest)?,
        )?;
        let target = format!("{}/{repo_tag}", self.host());
        let out = self.oras(work.path(), &["manifest", "push", &target, "manifest.json"])?;
        digest_in(&out).with_context(|| format!("no digest in oras output: {out}"))
    }

    /// Pushes a manifest's exact bytes (its digest is theirs; oras takes the media type from its
    /// `mediaType` field); returns its digest.
    pub fn push_manifest_bytes(&self, repo_tag: &str, manifest: &[u8]) -> Result<String> {
        let work = tempfile::tempdir()?;
        fs::write(work.path().join("manifest.json"), manifest)?;
        let target = format!("{}/{repo_tag}", self.host());
        let out = self.oras(work.path(), &["manifest", "push", &target, "manifest.json"])?;
        digest_in(&out).with_context(|| format!("no digest in oras output: {out}"))
    }

    /// A manifest's exact bytes (`oras manifest fetch`); `repo_ref` is `repo:tag` or
    /// `repo@sha256:<hex>`.
    pub fn manifest_bytes(&self, repo_ref: &str) -> Result<Vec<u8>> {
        let work = tempfile::tempdir()?;
        let target = format!("{}/{repo_ref}", self.host());
        self.oras(
            work.path(),
            &["manifest", "fetch", &target, "--output", "manifest.json"],
        )?;
        Ok(fs::read(work.path().join("manifest.json"))?)
    }

    /// A manifest, parsed.
    pub fn manifest(&self, repo_ref: &str) -> Result<serde_json::Value> {
        let bytes = self.manifest_bytes(repo_ref)?;
        serde_json::from_slice(&bytes).with_context(|| format!("manifest of {repo_ref} is no JSON"))
    }

    /// The cosign signature manifest of `digest` in `repo`: the one tagged
    /// `sha256-<hex>.sig` (see [`crate::cosign`]).
    pub fn signature_manifest(&self, repo: &str, digest: &str) -> Result<serde_json::Value> {
        self.manifest(&format!("{repo}:{}", signature_tag(digest)))
    }

    /// Tags `manifest` as the signature of `digest` in `repo` (replacing whatever was there);
    /// its blobs must be in `repo` already. Returns the manifest's digest.
    pub fn put_signature_manifest(
        &self,
        repo: &str,
        digest: &str,
        manifest: &serde_json::Value,
    ) -> Result<String> {
        self.push_manifest(&format!("{repo}:{}", signature_tag(digest)), manifest)
    }

    /// Tags the signature manifest of `from` (its exact bytes) as the signature of `to`, in the
    /// same repository: a valid signature, but of another digest. Returns the manifest's digest.
    pub fn copy_signature(&self, repo: &str, from: &str, to: &str) -> Result<String> {
        let bytes = self.manifest_bytes(&format!("{repo}:{}", signature_tag(from)))?;
        self.push_manifest_bytes(&format!("{repo}:{}", signature_tag(to)), &bytes)
    }

    /// The digest of the payload blob of `digest`'s signature (its simplesigning layer).
    pub fn signature_payload_digest(&self, repo: &str, digest: &str) -> Result<String> {
        let manifest = self.signature_manifest(repo, digest)?;
        manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["mediaType"] == SIMPLE_SIGNING_MEDIA_TYPE)
            .and_then(|l| l["digest"].as_str())
            .map(str::to_string)
            .with_context(|| format!("no {SIMPLE_SIGNING_MEDIA_TYPE} layer in {manifest}"))
    }

    /// Rewrites a blob's bytes in the registry's storage, behind its back: the registry keeps
    /// serving them under the old digest.
    pub fn edit_blob(&self, digest: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
        let path = self.blob_path(digest);
        let mut bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        edit(&mut bytes);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Changes one byte of the payload of `digest`'s signature in storage, keeping it valid JSON
    /// of the same length: the first hex digit of the `docker-manifest-digest` it claims
    /// (`0`↔`1`, else → `0`). The signature no longer matches the payload, nor the payload its
    /// digest. Returns the payload blob's digest.
    pub fn tamper_signature_payload(&self, repo: &str, digest: &str) -> Result<String> {
        let payload = self.signature_payload_digest(repo, digest)?;
        let mut found = false;
        self.edit_blob(&payload, |bytes| {
            let claim = b"\"docker-manifest-digest\":\"sha256:";
            if let Some(at) = bytes.windows(claim.len()).position(|w| w == claim) {
                let i = at + claim.len();
                bytes[i] = match bytes[i] {
                    b'0' => b'1',
                    _ => b'0',
                };
                found = true;
            }
        })?;
        if !found {
            bail!("no docker-manifest-digest in the payload {payload}");
        }
        Ok(payload)
    }

    /// `GET <path>` (e.g. `/v2/<repo>/blobs/<digest>`) on a plain HTTP registry without auth,
    /// with no client checking anything: the status, the headers (lower-cased names) and the
    /// body exactly as served.
    pub fn get(&self, path: &str) -> Result<RawResponse> {
        if self.options.tls
            || self.options.basic_auth.is_some()
            || self.options.token_auth.is_some()
        {
            bail!("Registry::get serves plain registries without auth only");
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        // HTTP/1.0: the answer is never chunked and ends with the connection.
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: knm-harness\r\n\r\n",
            self.host()
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers in the answer")?;
        let head = String::from_utf8_lossy(&answer[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok(RawResponse {
            status,
            headers,
            body: answer[end + 4..].to_vec(),
        })
    }

    /// Pushes an image manifest over `layers` (each `(digest, size, media type, annotations)`)
    /// with the empty config oras uses; returns the manifest digest.
    pub fn push_image(&self, repo_tag: &str, layers: &[serde_json::Value]) -> Result<String> {
        let repo = repo_tag.split(':').next().unwrap_or(repo_tag);
        let (config_digest, config_size) = self.push_blob(repo, b"{}")?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": layers,
        });
        self.push_manifest(repo_tag, &manifest)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- registry log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// An answer of the registry as served ([`Registry::get`]).
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header (`name` lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The first `sha256:<64 hex>` in oras's output.
fn digest_in(text: &str) -> Option<String> {
    let start = text.find("sha256:")?;
    let hex: String = text[start + 7..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    (hex.len() == 64).then(|| format!("sha256:{hex}"))
}

/// A layer descriptor for [`Registry::push_image`].
pub fn layer(digest: &str, size: u64, media_type: &str, title: Option<&str>) -> serde_json::Value {
    let mut layer = serde_json::json!({"mediaType": media_type, "digest": digest, "size": size});
    if let Some(title) = title {
        layer["annotations"] = serde_json::json!({"org.opencontainers.image.title": title});
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_digests_in_oras_output() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_in(&format!("Pushed [registry] x:1\nDigest: sha256:{hex}\n")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(digest_in("nothing"), None);
    }
}
