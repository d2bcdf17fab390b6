//! Where a class's `artifacts.pullSecret` comes from.
//!
//! Always: a Secret mounted at `<pullSecretsDir>/<name>/` (`.dockerconfigjson`, else a docker
//! `config.json`), read anew by every pull. With the `kube` feature, in a cluster (in-cluster
//! credentials and `POD_NAMESPACE`): a name with nothing mounted is read through the Kubernetes
//! API from the daemon's namespace, as k8s-kata-manager does, so a Secret needs no volume in the
//! DaemonSet. A mounted Secret keeps precedence, so a DaemonSet that projects its pull secrets
//! (and has no RBAC on Secrets) works as before.
//!
//! Secrets read through the API are parsed at once and kept in memory only, by name, until a
//! registry refuses them (401/403): the pull then reads the Secret again and retries once with
//! what it holds now, so a rotated password is picked up without a restart. Nothing is written
//! to disk, and no value of a Secret reaches a log line, an error or `status`: the parsed
//! config holds its values as [`Secret`](super::secret::Secret)s, and errors carry names only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::auth::{self, AuthFileError, DockerConfig};
use super::error::{ArtifactError, Result};
use crate::config::RuntimeClass;

/// Why a pull secret could not be read through the Kubernetes API. Names and reasons only,
/// never a value of the Secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullSecretError {
    #[error(
        "pull secret \"{secret}\" not found in namespace \"{namespace}\": create it (kubectl -n \
         {namespace} create secret docker-registry {secret} --docker-server=<registry> \
         --docker-username=<user> --docker-password=<password>), or mount it at \
         <pullSecretsDir>/{secret}/.dockerconfigjson"
    )]
    NotFound { secret: String, namespace: String },
    #[error(
        "reading Secret \"{secret}\" in namespace \"{namespace}\" is forbidden: the ServiceAccount \
         needs `get` on secrets with resourceNames [\"{secret}\"] (a Role and RoleBinding in \
         namespace \"{namespace}\"; docs/artifacts.md, \"Pull secrets\")"
    )]
    Forbidden { secret: String, namespace: String },
    #[error(
        "Secret \"{secret}\" in namespace \"{namespace}\" is of type {found}, not \
         kubernetes.io/dockerconfigjson: create it with kubectl -n {namespace} create secret \
         docker-registry {secret} …"
    )]
    WrongType {
        secret: String,
        namespace: String,
        found: String,
    },
    #[error(
        "Secret \"{secret}\" in namespace \"{namespace}\" (type {kind}) has no {key} in its data"
    )]
    MissingKey {
        secret: String,
        namespace: String,
        kind: String,
        key: &'static str,
    },
    #[error("Secret \"{secret}\" in namespace \"{namespace}\": {why}")]
    Invalid {
        secret: String,
        namespace: String,
        why: AuthFileError,
    },
    #[error(
        "reading Secret \"{secret}\" in namespace \"{namespace}\" through the Kubernetes API: {why}"
    )]
    Api {
        secret: String,
        namespace: String,
        why: String,
    },
}

/// Where a loaded pull secret came from, for its errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A file under `pullSecretsDir`.
    File(PathBuf),
    /// The Kubernetes API, in this namespace; `version` is the Secret's `resourceVersion`.
    /// (Only the `kube` feature reads Secrets there.)
    #[cfg_attr(not(feature = "kube"), allow(dead_code))]
    Api {
        namespace: String,
        version: Option<String>,
    },
}

/// A class's pull secret as one pull uses it: a snapshot, so a refresh by another pull cannot
/// change credentials under an endpoint being tried.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub name: String,
    pub origin: Origin,
    pub config: Arc<DockerConfig>,
}

impl Loaded {
    /// Whether both are the same `resourceVersion` of one Secret read through the API.
    pub fn same_version(&self, other: &Loaded) -> bool {
        match (&self.origin, &other.origin) {
            (
                Origin::Api {
                    namespace: a,
                    version: Some(va),
                },
                Origin::Api {
                    namespace: b,
                    version: Some(vb),
                },
            ) => self.name == other.name && a == b && va == vb,
            _ => false,
        }
    }

    /// The error for `why` about this secret, where it came from.
    pub fn error(&self, class: &RuntimeClass, why: AuthFileError) -> ArtifactError {
        match &self.origin {
            Origin::File(path) => ArtifactError::PullSecret {
                class: class.name.clone(),
                secret: self.name.clone(),
                path: path.clone(),
                why: why.to_string(),
            },
            Origin::Api { namespace, .. } => ArtifactError::PullSecretApi {
                class: class.name.clone(),
                error: PullSecretError::Invalid {
                    secret: self.name.clone(),
                    namespace: namespace.clone(),
                    why,
                },
            },
        }
    }
}

/// The sources of pull secrets: `pullSecretsDir`, and the Kubernetes API in a cluster.
pub struct PullSecrets {
    dir: PathBuf,
    #[cfg(feature = "kube")]
    api: Option<api::ApiSecrets>,
}

impl std::fmt::Debug for PullSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("PullSecrets");
        debug.field("dir", &self.dir);
        #[cfg(feature = "kube")]
        debug.field("namespace", &self.api.as_ref().map(|api| api.namespace()));
        debug.finish()
    }
}

impl PullSecrets {
    /// Mounted Secrets only (`<dir>/<name>/`).
    pub fn files(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            #[cfg(feature = "kube")]
            api: None,
        }
    }

    /// The API too when running in a cluster (with the `kube` feature, in-cluster credentials
    /// and `POD_NAMESPACE`); mounted Secrets only otherwise. No request is made here.
    pub fn detect(dir: impl Into<PathBuf>) -> Self {
        #[cfg(feature = "kube")]
        if let Some(api) = api::ApiSecrets::in_cluster() {
            tracing::debug!(namespace = %api.namespace(), "pull secrets not mounted are read through the Kubernetes API");
            return Self {
                dir: dir.into(),
                api: Some(api),
            };
        }
        Self::files(dir)
    }

    /// Mounted Secrets, then Secrets read with `client` from `namespace`.
    #[cfg(feature = "kube")]
    pub fn with_api(dir: impl Into<PathBuf>, client: kube::Client, namespace: &str) -> Self {
        Self {
            dir: dir.into(),
            api: Some(api::ApiSecrets::new(client, namespace)),
        }
    }

    /// The class's pull secret, `None` without one: the mounted one, else (in a cluster) the
    /// cached copy or a fresh read through the API.
    pub(crate) async fn load(&self, class: &RuntimeClass) -> Result<Option<Loaded>> {
        #[cfg(feature = "kube")]
        if let Some(api) = &self.api
            && let Some(name) = &class.artifacts.pull_secret
            && !self.mounted(name)
        {
            return api
                .load(name)
                .await
                .map(Some)
                .map_err(|error| ArtifactError::PullSecretApi {
                    class: class.name.clone(),
                    error,
                });
        }
        self.load_file(class)
    }

    /// The class's pull secret from `pullSecretsDir`.
    pub(crate) fn load_file(&self, class: &RuntimeClass) -> Result<Option<Loaded>> {
        let Some(name) = &class.artifacts.pull_secret else {
            return Ok(None);
        };
        let fail = |path: &Path, why: AuthFileError| ArtifactError::PullSecret {
            class: class.name.clone(),
            secret: name.clone(),
            path: path.to_owned(),
            why: why.to_string(),
        };
        let path = auth::secret_file(&self.dir, name).map_err(|e| fail(&self.dir.join(name), e))?;
        let config = DockerConfig::read(&path).map_err(|e| fail(&path, e))?;
        Ok(Some(Loaded {
            name: name.clone(),
            origin: Origin::File(path),
            config: Arc::new(config),
        }))
    }

    /// Whether `<dir>/<name>/` holds a Secret (either file [`auth::secret_file`] accepts).
    #[cfg(feature = "kube")]
    fn mounted(&self, name: &str) -> bool {
        auth::secret_file(&self.dir, name).is_ok_and(|path| path.exists())
    }

    /// Drops the cached copy of Secret `name`, if any: the next load reads it again.
    pub(crate) fn forget(&self, name: &str) {
        #[cfg(feature = "kube")]
        if let Some(api) = &self.api {
            api.forget(name);
        }
        #[cfg(not(feature = "kube"))]
        let _ = name;
    }

    /// Drops the cached copy of `loaded` after a registry refused it, so the next load reads the
    /// Secret again. Returns whether reading it again may help: not for a mounted Secret, which
    /// every load reads anyway.
    pub(crate) fn invalidate(&self, loaded: &Loaded) -> bool {
        match &loaded.origin {
            Origin::File(_) => false,
            #[cfg(feature = "kube")]
            Origin::Api { version, .. } => self.api.as_ref().is_some_and(|api| {
                api.invalidate(&loaded.name, version.as_deref());
                true
            }),
            #[cfg(not(feature = "kube"))]
            Origin::Api { .. } => false,
        }
    }
}

#[cfg(feature = "kube")]
mod api {
    //! The Kubernetes API source: `get` of one Secret by name in the daemon's namespace (no
    //! `list`, no `watch`), parsed and cached by name.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Secret as KubeSecret;
    use kube::Api;
    use tokio::sync::OnceCell;

    use super::{Loaded, Origin, PullSecretError};
    use crate::artifacts::auth::DockerConfig;

    /// The two Secret types that hold a docker config, with the key that holds it.
    const DOCKER_CONFIG_JSON: (&str, &str) =
        ("kubernetes.io/dockerconfigjson", ".dockerconfigjson");
    const DOCKER_CFG: (&str, &str) = ("kubernetes.io/dockercfg", ".dockercfg");
    /// A pull waits this long at most for the API server's answer (kube's default is none).
    const READ_TIMEOUT: Duration = Duration::from_secs(30);

    /// A Secret as read: its parsed config and `resourceVersion`.
    struct Cached {
        config: Arc<DockerConfig>,
        version: Option<String>,
    }

    pub(super) struct ApiSecrets {
        namespace: String,
        /// Built at the first read: building a client needs the runtime, and a store that
        /// never pulls (`status`) should not need one.
        config: Option<kube::Config>,
        client: OnceCell<kube::Client>,
        cache: Mutex<HashMap<String, Cached>>,
    }

    impl ApiSecrets {
        pub fn new(client: kube::Client, namespace: &str) -> Self {
            Self {
                namespace: namespace.to_owned(),
                config: None,
                client: OnceCell::new_with(Some(client)),
                cache: Mutex::default(),
            }
        }

        /// In-cluster credentials and `POD_NAMESPACE`, or `None` (outside a cluster).
        pub fn in_cluster() -> Option<Self> {
            let namespace = std::env::var(crate::cluster::NAMESPACE_ENV)
                .ok()
                .filter(|n| !n.is_empty())?;
            let mut config = crate::cluster::config()?;
            config.read_timeout = Some(READ_TIMEOUT);
            Some(Self {
                namespace,
                config: Some(config),
                client: OnceCell::new(),
                cache: Mutex::default(),
            })
        }

        pub fn namespace(&self) -> &str {
            &self.namespace
        }

        pub async fn load(&self, name: &str) -> Result<Loaded, PullSecretError> {
            let cached = self.cache().get(name).map(|c| Loaded {
                name: name.to_owned(),
                origin: Origin::Api {
                    namespace: self.namespace.clone(),
                    version: c.version.clone(),
                },
                config: c.config.clone(),
            });
            if let Some(loaded) = cached {
                return Ok(loaded);
            }
            let read = self.read(name).await?;
            tracing::info!(secret = %name, namespace = %self.namespace, resource_version = read.version.as_deref().unwrap_or(""), "pull secret read through the Kubernetes API");
            let loaded = Loaded {
                name: name.to_owned(),
                origin: Origin::Api {
                    namespace: self.namespace.clone(),
                    version: read.version.clone(),
                },
                config: read.config.clone(),
            };
            self.cache().insert(name.to_owned(), read);
            Ok(loaded)
        }

        pub fn forget(&self, name: &str) {
            self.cache().remove(name);
        }

        /// Forgets `name` if the cache still holds `version` of it: a newer copy another pull
        /// read in the meantime stays.
        pub fn invalidate(&self, name: &str, version: Option<&str>) {
            let mut cache = self.cache();
            if cache
                .get(name)
                .is_some_and(|cached| cached.version.as_deref() == version)
            {
                cache.remove(name);
            }
        }

        fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
            self.cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        async fn read(&self, name: &str) -> Result<Cached, PullSecretError> {
            let api_error = |why: String| PullSecretError::Api {
                secret: name.to_owned(),
                namespace: self.namespace.clone(),
                why,
            };
            let client = self
                .client
                .get_or_try_init(|| async {
                    let config = self
                        .config
                        .clone()
                        .ok_or_else(|| "no in-cluster configuration".to_owned())?;
                    kube::Client::try_from(config).map_err(|e| e.to_string())
                })
                .await
                .map_err(|why| api_error(format!("cannot build the client: {why}")))?;
            let secrets: Api<KubeSecret> = Api::namespaced(client.clone(), &self.namespace);
            match secrets.get_opt(name).await {
                Ok(Some(secret)) => parse(name, &self.namespace, secret),
                Ok(None) => Err(PullSecretError::NotFound {
                    secret: name.to_owned(),
                    namespace: self.namespace.clone(),
                }),
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    Err(PullSecretError::Forbidden {
                        secret: name.to_owned(),
                        namespace: self.namespace.clone(),
                    })
                }
                Err(kube::Error::Api(status)) if status.code == 401 => Err(api_error(
                    "the API server refused the ServiceAccount's token (401)".into(),
                )),
                // The server's own message names the object, never its data.
                Err(kube::Error::Api(status)) => Err(api_error(format!(
                    "the API server answered {}: {}",
                    status.code, status.message
                ))),
                // serde's message may quote what it could not parse: part of the Secret.
                Err(kube::Error::SerdeError(_)) => {
                    Err(api_error("the API server's answer is not a Secret".into()))
                }
                Err(e) => Err(api_error(crate::errors::chain(&e))),
            }
        }
    }

    /// The docker config of a Secret of one of the docker types.
    fn parse(name: &str, namespace: &str, secret: KubeSecret) -> Result<Cached, PullSecretError> {
        let kind = secret.type_.as_deref().unwrap_or("Opaque");
        let key = match kind {
            k if k == DOCKER_CONFIG_JSON.0 => DOCKER_CONFIG_JSON.1,
            k if k == DOCKER_CFG.0 => DOCKER_CFG.1,
            other => {
                return Err(PullSecretError::WrongType {
                    secret: name.to_owned(),
                    namespace: namespace.to_owned(),
                    found: other.to_owned(),
                });
            }
        };
        let Some(data) = secret.data.as_ref().and_then(|data| data.get(key)) else {
            return Err(PullSecretError::MissingKey {
                secret: name.to_owned(),
                namespace: namespace.to_owned(),
                kind: kind.to_owned(),
                key,
            });
        };
        let config = DockerConfig::parse(&data.0).map_err(|why| PullSecretError::Invalid {
            secret: name.to_owned(),
            namespace: namespace.to_owned(),
            why,
        })?;
        Ok(Cached {
            config: Arc::new(config),
            version: secret.metadata.resource_version.clone(),
        })
    }
}

#[cfg(all(test, feature = "kube"))]
mod tests {
    use super::*;
    use crate::artifacts::mirrors;
    use crate::artifacts::registry::RetryPolicy;
    use crate::artifacts::settings::StoreSettings;
    use crate::config::{Limits, Registries};
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use base64::Engine;
    use std::collections::HashMap;
    use std::sync::Mutex;

    const NAMESPACE: &str = "kata-system";
    /// Never in an error, a log line or a `Debug`.
    const PASSWORD_A: &str = "hunter2-first-password";
    const PASSWORD_B: &str = "hunter2-rotated-password";

    fn b64(text: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// What the fake API server answers for each Secret name, and how many GETs it served.
    #[derive(Default)]
    struct Secrets {
        answers: HashMap<String, (u16, serde_json::Value)>,
        gets: usize,
    }
    type ApiState = Arc<Mutex<Secrets>>;

    fn status(code: u16, reason: &str) -> (u16, serde_json::Value) {
        (
            code,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": reason, "reason": reason, "code": code
            }),
        )
    }

    /// A Secret as `kubectl create secret docker-registry` makes it, for `registry`.
    fn docker_secret(
        name: &str,
        kind: &str,
        key: &str,
        registry: &str,
        password: &str,
        version: &str,
    ) -> (u16, serde_json::Value) {
        let config = serde_json::json!({"auths": {registry: {
            "username": "robot", "password": password, "auth": b64(&format!("robot:{password}"))
        }}});
        (
            200,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": version},
                "type": kind,
                "data": {key: b64(&config.to_string())}
            }),
        )
    }

    /// A fake API server serving `GET /api/v1/namespaces/{ns}/secrets/{name}` (nothing else:
    /// no list, no watch).
    async fn fake_apiserver() -> (kube::Client, ApiState) {
        let state: ApiState = Arc::default();
        let app = axum::Router::new()
            .route(
                "/api/v1/namespaces/{ns}/secrets/{name}",
                axum::routing::get(
                    |State(state): State<ApiState>,
                     UrlPath((ns, name)): UrlPath<(String, String)>| async move {
                        let mut state = state.lock().unwrap();
                        state.gets += 1;
                        let (code, body) = match state.answers.get(&name) {
                            Some(answer) if ns == NAMESPACE => answer.clone(),
                            _ => status(404, "NotFound"),
                        };
                        (
                            StatusCode::from_u16(code).unwrap(),
                            [(header::CONTENT_TYPE, "application/json")],
                            body.to_string(),
                        )
                    },
                ),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (client, state)
    }

    /// The password a fake registry accepts (HTTP basic), and the manifest requests it saw.
    #[derive(Default)]
    struct Accepts {
        password: String,
        requests: usize,
    }
    type RegistryState = Arc<Mutex<Accepts>>;

    const MANIFEST: &str = r#"{"schemaVersion":2,"layers":[]}"#;

    /// A registry behind basic auth serving one manifest; returns its `host:port`.
    async fn fake_registry(password: &str) -> (String, RegistryState) {
        let state: RegistryState = Arc::new(Mutex::new(Accepts {
            password: password.into(),
            requests: 0,
        }));
        let app = axum::Router::new()
            .route(
                "/v2/kata/artifacts/manifests/{tag}",
                axum::routing::get(
                    |State(state): State<RegistryState>, headers: HeaderMap| async move {
                        let mut state = state.lock().unwrap();
                        state.requests += 1;
                        let wanted = format!("Basic {}", b64(&format!("robot:{}", state.password)));
                        let given = headers.get(header::AUTHORIZATION);
                        if given.and_then(|v| v.to_str().ok()) != Some(wanted.as_str()) {
                            return Response::builder()
                                .status(401)
                                .header(header::WWW_AUTHENTICATE, "Basic realm=\"fake\"")
                                .body(axum::body::Body::empty())
                                .unwrap();
                        }
                        let digest = format!(
                            "sha256:{:x}",
                            <sha2::Sha256 as sha2::Digest>::digest(MANIFEST)
                        );
                        (
                            [
                                (
                                    header::CONTENT_TYPE,
                                    "application/vnd.oci.image.manifest.v1+json".to_owned(),
                                ),
                                (
                                    header::HeaderName::from_static("docker-content-digest"),
                                    digest,
                                ),
                            ],
                            MANIFEST,
                        )
                            .into_response()
                    },
                ),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (host, state)
    }

    fn class(registry: &str) -> RuntimeClass {
        serde_yaml::from_str(&format!(
            "{{name: gpu, artifacts: {{url: \"{registry}/kata/artifacts:1.0\", pullSecret: ngc}}}}"
        ))
        .unwrap()
    }

    fn settings(dir: &Path, registry: &str) -> StoreSettings {
        StoreSettings {
            artifacts_dir: dir.join("artifacts"),
            pull_secrets_dir: dir.join("secrets"),
            registries: Registries {
                insecure: vec![registry.to_owned()],
                ..Registries::default()
            },
            limits: Limits::default(),
            parallel_layers: 1,
            retry: RetryPolicy {
                attempts: 1,
                ..RetryPolicy::default()
            },
            allowed_host_paths: Vec::new(),
            allowed_keys: Vec::new(),
            allowed_arguments: Vec::new(),
            hosts_dirs: Vec::new(),
        }
    }

    fn answer(state: &ApiState, name: &str, answer: (u16, serde_json::Value)) {
        state.lock().unwrap().answers.insert(name.into(), answer);
    }

    /// Log lines written while the test runs on this thread (a current-thread runtime's).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Logs {
        fn capture(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            tracing::subscriber::set_default(
                tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::TRACE)
                    .with_writer(move || writer.clone())
                    .with_ansi(false)
                    .finish(),
            )
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn assert_no_password(text: &str) {
        for secret in [PASSWORD_A, PASSWORD_B, &b64(&format!("robot:{PASSWORD_A}"))] {
            assert!(!text.contains(secret), "a secret value leaked: {text}");
        }
        assert!(!text.contains("hunter2"), "a secret value leaked: {text}");
    }

    #[tokio::test]
    async fn a_secret_read_through_the_api_gives_the_registry_credentials() {
        let (client, api) = fake_apiserver().await;
        answer(
            &api,
            "ngc",
            docker_secret(
                "ngc",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                "nvcr.io",
                PASSWORD_A,
                "7",
            ),
        );
        let dir = tempfile::tempdir().unwrap();
        let secrets = PullSecrets::with_api(dir.path(), client, NAMESPACE);
        let class = class("nvcr.io");
        let loaded = secrets.load(&class).await.unwrap().unwrap();
        assert_eq!(
            loaded.origin,
            Origin::Api {
                namespace: NAMESPACE.into(),
                version: Some("7".into())
            }
        );
        assert!(matches!(
            loaded.config.lookup("nvcr.io").unwrap(),
            Some(crate::artifacts::auth::Credentials::Basic { ref username, ref password })
                if username == "robot" && password.expose() == PASSWORD_A
        ));
        // Cached: the second pull asks the API server nothing.
        secrets.load(&class).await.unwrap().unwrap();
        assert_eq!(api.lock().unwrap().gets, 1);
        assert_no_password(&format!("{loaded:?} {secrets:?}"));

        // The legacy type, with its own key.
        answer(
            &api,
            "old",
            docker_secret(
                "old",
                "kubernetes.io/dockercfg",
                ".dockercfg",
                "nvcr.io",
                PASSWORD_A,
                "1",
            ),
        );
        let mut legacy = class.clone();
        legacy.artifacts.pull_secret = Some("old".into());
        let loaded = secrets.load(&legacy).await.unwrap().unwrap();
        assert!(loaded.config.lookup("nvcr.io").unwrap().is_some());

        // No pullSecret: no request.
        let mut anonymous = class.clone();
        anonymous.artifacts.pull_secret = None;
        assert!(secrets.load(&anonymous).await.unwrap().is_none());
        assert_eq!(api.lock().unwrap().gets, 2);
    }

    #[tokio::test]
    async fn an_absent_secret_names_the_secret_and_the_namespace() {
        let (client, api) = fake_apiserver().await;
        let dir = tempfile::tempdir().unwrap();
        let secrets = PullSecrets::with_api(dir.path(), client, NAMESPACE);
        let error = secrets.load(&class("nvcr.io")).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "pulling gpu: pull secret \"ngc\" not found in namespace \"kata-system\": create it \
             (kubectl -n kata-system create secret docker-registry ngc --docker-server=<registry> \
             --docker-username=<user> --docker-password=<password>), or mount it at \
             <pullSecretsDir>/ngc/.dockerconfigjson"
        );
        assert_eq!(error.class(), "gpu");
        // Absence is not cached: the Secret created later is found by the next pull.
        answer(
            &api,
            "ngc",
            docker_secret(
                "ngc",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                "nvcr.io",
                PASSWORD_A,
                "1",
            ),
        );
        assert!(secrets.load(&class("nvcr.io")).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_forbidden_secret_says_which_rbac_rule_is_missing() {
        let (client, api) = fake_apiserver().await;
        answer(&api, "ngc", status(403, "Forbidden"));
        let dir = tempfile::tempdir().unwrap();
        let secrets = PullSecrets::with_api(dir.path(), client, NAMESPACE);
        let error = secrets.load(&class("nvcr.io")).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "pulling gpu: reading Secret \"ngc\" in namespace \"kata-system\" is forbidden: the \
             ServiceAccount needs `get` on secrets with resourceNames [\"ngc\"] (a Role and \
             RoleBinding in namespace \"kata-system\"; docs/artifacts.md, \"Pull secrets\")"
        );
    }

    #[tokio::test]
    async fn a_secret_that_is_no_docker_config_is_refused_without_its_data() {
        let (client, api) = fake_apiserver().await;
        let (_, mut opaque) = docker_secret(
            "ngc",
            "Opaque",
            ".dockerconfigjson",
            "nvcr.io",
            PASSWORD_A,
            "1",
        );
        opaque["type"] = "Opaque".into();
        answer(&api, "ngc", (200, opaque));
        let dir = tempfile::tempdir().unwrap();
        let secrets = PullSecrets::with_api(dir.path(), client, NAMESPACE);
        let error = secrets.load(&class("nvcr.io")).await.unwrap_err();
        assert!(
            error.to_string().starts_with(
                "pulling gpu: Secret \"ngc\" in namespace \"kata-system\" is of type Opaque, not kubernetes.io/dockerconfigjson"
            ),
            "{error}"
        );
        // Right type, wrong key.
        answer(
            &api,
            "ngc",
            docker_secret(
                "ngc",
                "kubernetes.io/dockerconfigjson",
                "config.json",
                "nvcr.io",
                PASSWORD_A,
                "2",
            ),
        );
        let error = secrets.load(&class("nvcr.io")).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "pulling gpu: Secret \"ngc\" in namespace \"kata-system\" (type \
             kubernetes.io/dockerconfigjson) has no .dockerconfigjson in its data"
        );
        // A docker config whose `auth` is no user:password: the error quotes none of it.
        let config = format!(r#"{{"auths": {{"nvcr.io": {{"auth": "{PASSWORD_A}!"}}}}}}"#);
        answer(
            &api,
            "ngc",
            (
                200,
                serde_json::json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "ngc", "namespace": NAMESPACE, "resourceVersion": "3"},
                    "type": "kubernetes.io/dockerconfigjson",
                    "data": {".dockerconfigjson": b64(&config)}
                }),
            ),
        );
        let loaded = secrets.load(&class("nvcr.io")).await.unwrap().unwrap();
        let source = class("nvcr.io").artifacts.url;
        let error = crate::artifacts::registry::Registry::connect(
            &class("nvcr.io"),
            &source,
            &crate::artifacts::hosts::Endpoint::upstream("nvcr.io", false),
            &Registries::default(),
            Some(&loaded),
            RetryPolicy::default(),
        )
        .err()
        .unwrap();
        assert_eq!(
            error.to_string(),
            "pulling gpu: Secret \"ngc\" in namespace \"kata-system\": the entry for nvcr.io has \
             an `auth` field that is not base64 of user:password"
        );
        assert_no_password(&format!("{error} {error:?}"));
    }

    #[tokio::test]
    async fn a_mounted_secret_takes_precedence_over_the_api() {
        let (client, api) = fake_apiserver().await;
        let dir = tempfile::tempdir().unwrap();
        let mounted = dir.path().join("ngc");
        std::fs::create_dir_all(&mounted).unwrap();
        std::fs::write(
            mounted.join(".dockerconfigjson"),
            r#"{"auths": {"nvcr.io": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        let secrets = PullSecrets::with_api(dir.path(), client, NAMESPACE);
        let loaded = secrets.load(&class("nvcr.io")).await.unwrap().unwrap();
        assert_eq!(
            loaded.origin,
            Origin::File(mounted.join(".dockerconfigjson"))
        );
        assert_eq!(api.lock().unwrap().gets, 0);
        // A mounted Secret is read by every pull: nothing to invalidate.
        assert!(!secrets.invalidate(&loaded));
    }

    /// The password is rotated: the registry refuses the cached copy with a 401, the Secret is
    /// read again, and the pull goes through with the new password. Nothing of either password
    /// reaches the logs.
    #[tokio::test]
    async fn a_rotated_password_is_read_again_after_a_401() {
        let logs = Logs::default();
        let _guard = logs.capture();
        let (client, api) = fake_apiserver().await;
        let (registry, accepts) = fake_registry(PASSWORD_A).await;
        let secret = |password, version| {
            docker_secret(
                "ngc",
                "kubernetes.io/dockerconfigjson",
                ".dockerconfigjson",
                &registry,
                password,
                version,
            )
        };
        answer(&api, "ngc", secret(PASSWORD_A, "1"));
        let dir = tempfile::tempdir().unwrap();
        let secrets = PullSecrets::with_api(dir.path(), client, NAMESPACE);
        let class = class(&registry);
        let settings = settings(dir.path(), &registry);

        let served = mirrors::resolve(&class, &settings, &secrets, None)
            .await
            .unwrap();
        assert_eq!(&served.body[..], MANIFEST.as_bytes());
        assert_eq!(api.lock().unwrap().gets, 1);

        // Rotation: the registry takes only B now, and the Secret holds B.
        accepts.lock().unwrap().password = PASSWORD_B.into();
        answer(&api, "ngc", secret(PASSWORD_B, "2"));
        let served = mirrors::resolve(&class, &settings, &secrets, None)
            .await
            .unwrap();
        assert_eq!(&served.body[..], MANIFEST.as_bytes());
        assert_eq!(api.lock().unwrap().gets, 2, "the Secret is read again once");
        // And cached again: the next pull asks the API server nothing.
        mirrors::resolve(&class, &settings, &secrets, None)
            .await
            .unwrap();
        assert_eq!(api.lock().unwrap().gets, 2);

        // A Secret that did not change is not tried twice: the registry's 401 stands.
        accepts.lock().unwrap().password = "something else".into();
        let before = accepts.lock().unwrap().requests;
        let error = mirrors::resolve(&class, &settings, &secrets, None)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(error, ArtifactError::Unauthorized { status: 401, .. }),
            "{error}"
        );
        assert_eq!(api.lock().unwrap().gets, 3);
        // One manifest request and its authorized repeat, no retry.
        assert_eq!(accepts.lock().unwrap().requests - before, 2);
        assert_no_password(&format!("{error} {error:?}"));

        // Only this test reaches this warning, so its callsite is enabled for our subscriber
        // (tracing caches a callsite's interest across threads: lines the other tests running
        // alongside reach first may be missing here).
        let logs = logs.text();
        assert!(
            logs.contains("registry refused the cached pull secret"),
            "{logs}"
        );
        assert_no_password(&logs);
    }
}
