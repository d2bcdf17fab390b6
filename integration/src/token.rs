//! A Docker token service for a real `docker-registry` started with `auth: token`: the
//! protocol Docker Hub, GHCR, Quay and Harbor speak ("Docker Registry v2 authentication").
//!
//! The registry answers an anonymous request with `401` and `WWW-Authenticate: Bearer
//! realm=<this service>,service=…,scope=…`; the client asks this service for a token with its
//! basic credentials; the service signs a JWT (ES256, its certificate in the `x5c` header, which
//! distribution checks against its `rootcertbundle`) granting what the account may do; the
//! registry checks the signature, the issuer, the audience and the `access` claim.
//!
//! Accounts decide the answers a test needs: a password, the repositories it may pull, or a
//! flat `403` from the service. Every request is logged (account, scopes, status) and every
//! token issued is kept, so tests can look for them in what the client logged.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use crate::http1::{Request, Response, Server};

/// The `service` the registry names in its challenge and the `aud` of our tokens.
pub const SERVICE: &str = "knm-registry";
/// The `iss` of our tokens, which the registry trusts.
pub const ISSUER: &str = "knm-token-service";

/// What the service does for one user.
#[derive(Debug, Clone)]
pub struct Account {
    pub password: String,
    /// Repositories this account may pull; others get a token without access.
    pub pull: Vec<String>,
    /// The service answers `403` to any token request of this account.
    pub refused: bool,
    /// Granted whatever it asks for (the account tests push with).
    pub admin: bool,
    /// How long its tokens are valid (`exp`, `expires_in`).
    pub lifetime: Duration,
}

/// The lifetime of a token unless an account says otherwise: distribution's default.
const LIFETIME: Duration = Duration::from_secs(300);

impl Account {
    pub fn pulls(password: &str, repositories: &[&str]) -> Self {
        Self {
            password: password.into(),
            pull: repositories.iter().map(|r| (*r).to_owned()).collect(),
            refused: false,
            admin: false,
            lifetime: LIFETIME,
        }
    }

    pub fn refused(password: &str) -> Self {
        Self {
            password: password.into(),
            pull: vec![],
            refused: true,
            admin: false,
            lifetime: LIFETIME,
        }
    }

    pub fn admin(password: &str) -> Self {
        Self {
            password: password.into(),
            pull: vec![],
            refused: false,
            admin: true,
            lifetime: LIFETIME,
        }
    }

    /// Its tokens expire `lifetime` after they are issued (a pull that outlasts one).
    pub fn expiring_after(self, lifetime: Duration) -> Self {
        Self { lifetime, ..self }
    }
}

/// One token request as the service saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The account, or `None` for an anonymous request.
    pub user: Option<String>,
    pub scopes: Vec<String>,
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    accounts: BTreeMap<String, Account>,
    requests: Vec<TokenRequest>,
    issued: Vec<String>,
}

/// The running service on `127.0.0.1:<port>`, plain HTTP (the registries it serves in tests are
/// plain HTTP too: a client sends credentials to a realm only as securely as to the registry).
pub struct TokenService {
    server: Server,
    dir: tempfile::TempDir,
    shared: Arc<Mutex<Shared>>,
}

impl TokenService {
    pub fn start(accounts: BTreeMap<String, Account>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("knm-token-").tempdir()?;
        let key = signing_key(dir.path())?;
        let certificate = fs::read(dir.path().join("token.der"))?;
        let shared = Arc::new(Mutex::new(Shared {
            accounts,
            ..Shared::default()
        }));
        let signer = Signer {
            key,
            issued: AtomicU64::new(0),
            x5c: STANDARD.encode(certificate),
        };
        let state = shared.clone();
        let server = Server::start("token-service", move |request| {
            answer(request, &state, &signer)
                .unwrap_or_else(|e| Response::json(500, &error_body("UNKNOWN", &format!("{e:#}"))))
        })?;
        Ok(Self {
            server,
            dir,
            shared,
        })
    }

    /// The realm the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.server.host())
    }

    /// The certificate the registry trusts (`rootcertbundle`).
    pub fn certificate(&self) -> PathBuf {
        self.dir.path().join("token.pem")
    }

    /// The registry configuration's `auth:` section for this service.
    pub fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm(),
            self.certificate().display()
        )
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.lock().requests.clone()
    }

    /// Every token issued so far.
    pub fn issued(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An ES256 key and a self-signed certificate for it, made with `openssl` as the registry's
/// other test certificates are.
fn signing_key(dir: &Path) -> Result<EcdsaKeyPair> {
    let p = |name: &str| dir.join(name).display().to_string();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={ISSUER}"),
        "-keyout",
        &p("token.key"),
        "-out",
        &p("token.pem"),
    ]))?;
    run(Command::new("openssl").args([
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &p("token.key"),
        "-outform",
        "DER",
        "-out",
        &p("token.pk8"),
    ]))?;
    run(Command::new("openssl").args([
        "x509",
        "-in",
        &p("token.pem"),
        "-outform",
        "DER",
        "-out",
        &p("token.der"),
    ]))?;
    let pkcs8 = fs::read(dir.join("token.pk8"))?;
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8,
        &SystemRandom::new(),
    )
    .map_err(|e| anyhow::anyhow!("token signing key: {e}"))
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

struct Signer {
    key: EcdsaKeyPair,
    /// Tokens signed so far: makes each `jti` unique.
    issued: AtomicU64,
    x5c: String,
}

impl Signer {
    /// A JWT as distribution's `token.Token` reads it.
    fn token(
        &self,
        user: &str,
        access: &[(String, Vec<&str>)],
        lifetime: Duration,
    ) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let access: Vec<_> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": user,
            "aud": SERVICE,
            "exp": now + lifetime.as_secs(),
            "nbf": now - 10,
            "iat": now,
            "jti": format!("{now}-{}", self.issued.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// The answer to one token request.
fn answer(request: &Request, shared: &Mutex<Shared>, signer: &Signer) -> Result<Response> {
    let scopes: Vec<String> = request
        .query
        .iter()
        .filter(|(key, _)| key == "scope")
        .map(|(_, value)| value.clone())
        .collect();
    let credentials = request
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|pair| String::from_utf8(pair).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(u, p)| (u.to_owned(), p.to_owned()))
        });

    let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
    let account = credentials
        .as_ref()
        .map(|(user, password)| (user, password, shared.accounts.get(user).cloned()));
    let (status, body) = match (request.path.as_str(), account) {
        ("/token", None) => {
            // Anonymous: a token, but one that grants nothing (as Docker Hub does for a
            // private repository).
            let token = signer.token("", &[], LIFETIME)?;
            shared.issued.push(token.clone());
            (200, token_body(&token, LIFETIME))
        }
        ("/token", Some((user, password, Some(account)))) if *password == account.password => {
            if account.refused {
                (
                    403,
                    error_body("DENIED", "access to the requested resource is denied"),
                )
            } else {
                let access: Vec<(String, Vec<&str>)> = scopes
                    .iter()
                    .filter_map(|scope| scope.strip_prefix("repository:"))
                    .filter_map(|scope| scope.rsplit_once(':'))
                    .map(|(name, actions)| {
                        let granted = if account.admin {
                            actions.split(',').collect()
                        } else if account.pull.iter().any(|r| r == name) {
                            vec!["pull"]
                        } else {
                            vec![]
                        };
                        (name.to_owned(), granted)
                    })
                    .collect();
                let token = signer.token(user, &access, account.lifetime)?;
                shared.issued.push(token.clone());
                (200, token_body(&token, account.lifetime))
            }
        }
        ("/token", Some(_)) => (
            401,
            error_body(
                "UNAUTHORIZED",
                "authentication required: bad user or password",
            ),
        ),
        _ => (404, error_body("NOT_FOUND", "no such endpoint")),
    };
    shared.requests.push(TokenRequest {
        user: credentials.map(|(user, _)| user),
        scopes,
        status,
    });
    Ok(Response::json(status, &body))
}

fn token_body(token: &str, lifetime: Duration) -> serde_json::Value {
    serde_json::json!({"token": token, "access_token": token, "expires_in": lifetime.as_secs()})
}

fn error_body(code: &str, message: &str) -> serde_json::Value {
    serde_json::json!({"errors": [{"code": code, "message": message}]})
}
