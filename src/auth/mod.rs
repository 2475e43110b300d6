//! Who may use the HTTP API: bearer tokens with a role each, checked on every request.
//!
//! - Tokens come from a file of hashes (`api.tokens_file`: `<name> <role> sha256:<hex>`
//!   per line, so the file holds no secret) or an environment variable
//!   (`api.tokens_env`: `<name>:<role>:<token>`, comma-separated), which is hashed at
//!   start-up; only SHA-256 hashes are kept in memory.
//! - A presented token is hashed and compared with every stored hash in constant time
//!   (no early exit, no comparison that stops at the first differing byte).
//! - Roles: `metrics` may scrape `/metrics`; `viewer` may also read `/api/v1/*`;
//!   `operator` may also act (dead-letter list and redrive). `/healthz`, `/readyz` and
//!   the static files of the web view are open: they carry no monitored data.
//! - Without tokens the API is served only on a loopback address, unless
//!   `api.insecure_no_auth` (or `run --insecure-no-auth`) says otherwise, which is logged
//!   at ERROR on start.
//!
//! [`serve`] binds the listener (TLS when `api.tls_cert` is set, see [`tls`]), wraps the
//! router with the auth and audit layer, and returns the bound address.

pub mod tls;

use crate::audit::{AuditLog, AuditRecord};
use crate::config::Api;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Scrape `/metrics` only.
    Metrics,
    /// Read `/metrics` and the JSON API.
    Viewer,
    /// Viewer, plus actions (dead letters: list, redrive).
    Operator,
}

impl Role {
    pub const NAMES: &'static [&'static str] = &["viewer", "operator", "metrics"];

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "metrics" => Some(Role::Metrics),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Metrics => "metrics",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }

    /// Whether this role may do what `need` asks.
    pub fn allows(self, need: Need) -> bool {
        match need {
            Need::Nothing => true,
            Need::Scrape => true,
            Need::Read => matches!(self, Role::Viewer | Role::Operator),
            Need::Act => self == Role::Operator,
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Health probes and the web view's static files.
    Nothing,
    /// `/metrics`.
    Scrape,
    /// `/api/v1/*` reads.
    Read,
    /// Actions and raw dead letters (`/api/v1/dlq*`).
    Act,
}

impl Need {
    /// What `method path` needs.
    pub fn of(method: &axum::http::Method, path: &str) -> Need {
        let read = matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD);
        if path.starts_with("/api/v1/dlq") || (path.starts_with("/api/") && !read) {
            Need::Act
        } else if path.starts_with("/api/") {
            Need::Read
        } else if path == "/metrics" {
            Need::Scrape
        } else {
            Need::Nothing
        }
    }

    fn name(self) -> &'static str {
        match self {
            Need::Nothing => "nothing",
            Need::Scrape => "metrics",
            Need::Read => "viewer",
            Need::Act => "operator",
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

/// Why the token configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("api.tokens_file `{path}`: {why}")]
    File { path: String, why: String },
    #[error("api.tokens_env: environment variable `{0}` is not set")]
    EnvMissing(String),
    #[error("api tokens:\n  {}", .0.join("\n  "))]
    Entries(Vec<String>),
    #[error("refusing to serve the API on {0} without authentication: configure api.tokens_file or api.tokens_env, bind a loopback address, or pass --insecure-no-auth")]
    Unprotected(SocketAddr),
    #[error("api TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Serve(String),
}

struct Entry {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The configured tokens, as SHA-256 hashes.
pub struct TokenStore {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenStore({} tokens)", self.entries.len())
    }
}

/// `sha256:<64 hex>` of `token`: what a tokens file holds.
pub fn hash_token(token: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(token.as_bytes())))
}

/// A new random token (32 bytes, URL-safe base64).
pub fn new_token() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn role(problems: &mut Vec<String>, at: &str, text: &str) -> Role {
    Role::parse(text).unwrap_or_else(|| {
        problems.push(format!(
            "{at}: `{text}` is not a role; expected one of {}",
            Role::NAMES.join(", ")
        ));
        Role::Metrics
    })
}

impl TokenStore {
    /// The tokens `api` configures, or `None` when it configures none. Every problem in
    /// the file and the variable is reported at once; token values never appear in them.
    pub fn load(api: &Api) -> Result<Option<TokenStore>, AuthError> {
        if api.tokens_file.is_none() && api.tokens_env.is_none() {
            return Ok(None);
        }
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        if let Some(path) = &api.tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| AuthError::File {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            Self::parse_file(&text, &mut entries, &mut problems);
        }
        if let Some(var) = &api.tokens_env {
            let text = std::env::var(var).map_err(|_| AuthError::EnvMissing(var.clone()))?;
            Self::parse_env(var, &text, &mut entries, &mut problems);
        }
        let mut names = std::collections::BTreeSet::new();
        for e in &entries {
            if !names.insert(e.name.as_str()) {
                problems.push(format!("token name `{}` is used twice", e.name));
            }
        }
        if entries.is_empty() && problems.is_empty() {
            problems.push("no token configured; add at least one".into());
        }
        if problems.is_empty() {
            Ok(Some(TokenStore { entries }))
        } else {
            Err(AuthError::Entries(problems))
        }
    }

    /// `<name> <role> sha256:<hex>` per line; blank lines and `#` comments are skipped.
    fn parse_file(text: &str, entries: &mut Vec<Entry>, problems: &mut Vec<String>) {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("tokens file line {}", n + 1);
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [name, role_text, hash_text] = parts[..] else {
                problems.push(format!(
                    "{at}: expected `<name> <role> sha256:<64 hex digits>` ({} fields found)",
                    parts.len()
                ));
                continue;
            };
            let role = role(problems, &at, role_text);
            match parse_hash(hash_text) {
                Some(hash) => entries.push(Entry {
                    name: name.to_string(),
                    role,
                    hash,
                }),
                None => problems.push(format!(
                    "{at}: the third field is not `sha256:<64 hex digits>` (a token hash; `synclag api-token` makes one)"
                )),
            }
        }
    }

    /// `<name>:<role>:<token>`, comma-separated.
    fn parse_env(var: &str, text: &str, entries: &mut Vec<Entry>, problems: &mut Vec<String>) {
        for (i, item) in text.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                continue;
            }
            let at = format!("{var} entry {}", i + 1);
            let mut parts = item.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(name), Some(role_text), Some(token)) if !name.is_empty() => {
                    if token.len() < 16 {
                        problems.push(format!(
                            "{at} (`{name}`): the token is shorter than 16 characters"
                        ));
                        continue;
                    }
                    let role = role(problems, &at, role_text);
                    entries.push(Entry {
                        name: name.to_string(),
                        role,
                        hash: Sha256::digest(token.as_bytes()).into(),
                    });
                }
                _ => problems.push(format!("{at}: expected `<name>:<role>:<token>`")),
            }
        }
    }

    /// The identity whose token is `token`, comparing against every stored hash.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for e in &self.entries {
            // Every entry is compared, whether or not one matched already.
            if bool::from(e.hash.ct_eq(&presented)) {
                found = Some(Identity {
                    name: e.name.clone(),
                    role: e.role,
                });
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the auth layer needs per request.
#[derive(Clone)]
pub struct Guard {
    /// `None`: authentication is off (loopback, or explicitly insecure).
    pub tokens: Option<Arc<TokenStore>>,
    pub audit: AuditLog,
}

/// The client address of a connection, plain or TLS.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::TlsListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tls::TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// The identity a handler sees (an extension set by [`check`]).
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Option<Identity>,
    pub client: Option<SocketAddr>,
}

impl Caller {
    /// The name audit records give this caller.
    pub fn name(&self) -> String {
        self.identity
            .as_ref()
            .map_or_else(|| "anonymous".to_string(), |i| i.name.clone())
    }

    pub fn role(&self) -> Option<&'static str> {
        self.identity.as_ref().map(|i| i.role.name())
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn denied(status: StatusCode, message: String) -> Response {
    let mut r = (status, Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"synclag\""),
        );
    }
    r
}

/// The auth and audit layer: 401 without a valid token, 403 when the role does not
/// allow the request; every request to `/metrics` and `/api/*`, and every refused one,
/// leaves an audit record.
pub async fn check(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let client = req
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|c| c.0 .0);
    let need = Need::of(&method, &path);
    let mut caller = Caller {
        identity: None,
        client,
    };
    let refusal = match &guard.tokens {
        None => None,
        Some(_) if need == Need::Nothing => None,
        Some(tokens) => match bearer(&req).map(|t| tokens.authenticate(t)) {
            None => Some(denied(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: send `Authorization: Bearer <token>`".into(),
            )),
            Some(None) => Some(denied(
                StatusCode::UNAUTHORIZED,
                "invalid bearer token".into(),
            )),
            Some(Some(id)) if !id.role.allows(need) => {
                let message = format!(
                    "role `{}` may not {method} {path}; it needs role `{}`",
                    id.role.name(),
                    need.name()
                );
                caller.identity = Some(id);
                Some(denied(StatusCode::FORBIDDEN, message))
            }
            Some(Some(id)) => {
                caller.identity = Some(id);
                None
            }
        },
    };
    let response = match refusal {
        Some(r) => r,
        None => {
            req.extensions_mut().insert(caller.clone());
            next.run(req).await
        }
    };
    let status = response.status();
    if need != Need::Nothing
        || status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
    {
        // A full audit queue is counted and logged by `record`; the request still answers.
        let _queued = guard.audit.record(AuditRecord::request(
            &caller,
            method.as_str(),
            &path,
            status.as_u16(),
            started.elapsed(),
        ));
    }
    response
}

/// Whether `api` lets the service serve `addr` with `tokens`; logs loudly when insecure.
pub fn admit(addr: SocketAddr, api: &Api, tokens: Option<&TokenStore>) -> Result<(), AuthError> {
    match tokens {
        Some(t) => {
            tracing::info!(tokens = t.len(), %addr, "API authentication on (bearer tokens)");
            Ok(())
        }
        None if addr.ip().is_loopback() => {
            tracing::info!(%addr, "API authentication off: no tokens configured, loopback address only");
            Ok(())
        }
        None if api.insecure_no_auth => {
            tracing::error!(%addr, "API served WITHOUT AUTHENTICATION on a non-loopback address (--insecure-no-auth): anyone who can reach it reads monitoring data");
            Ok(())
        }
        None => Err(AuthError::Unprotected(addr)),
    }
}

/// Binds `addr`, serves `app` behind the auth and audit layer (HTTPS when `api` has a
/// certificate) until `shutdown`, and returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    bound: Option<std::net::TcpListener>,
    api: &Api,
    app: Router,
    guard: Guard,
    shutdown: CancellationToken,
) -> Result<SocketAddr, AuthError> {
    admit(addr, api, guard.tokens.as_deref())?;
    let app = app.layer(axum::middleware::from_fn_with_state(guard, check));
    let tcp = match bound {
        Some(listener) => listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|e| AuthError::Serve(format!("cannot serve on {addr}: {e}")))?,
        None => tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AuthError::Serve(format!("cannot bind {addr}: {e}")))?,
    };
    let local = tcp
        .local_addr()
        .map_err(|e| AuthError::Serve(e.to_string()))?;
    let service = app.into_make_service_with_connect_info::<ClientAddr>();
    match (&api.tls_cert, &api.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = tls::acceptor(cert, key)?;
            let listener = tls::TlsListener::new(tcp, acceptor, shutdown.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, service)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "HTTPS server stopped");
                }
            });
        }
        _ => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(tcp, service)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            });
        }
    }
    Ok(local)
}

/// The service's API: the read API of `emit::http` and the dead-letter actions, behind
/// authentication and the audit trail, on `service.http_listen` (or on `bound`, a
/// socket already listening there).
pub async fn serve_api(
    topology: &Arc<crate::config::Topology>,
    bound: Option<std::net::TcpListener>,
    state: crate::emit::http::ApiState,
    shutdown: CancellationToken,
) -> Result<SocketAddr, AuthError> {
    let tokens = TokenStore::load(&topology.api)?.map(Arc::new);
    // Output topics are created off the start-up path (an unreachable broker must not
    // delay /readyz); audit records wait for it, so the audit topic gets its retention.
    let t = topology.clone();
    let created = tokio::spawn(async move {
        crate::retention::ensure_output_topics(&t).await;
    });
    let audit = AuditLog::start_after(topology, async move {
        let _ = created.await;
    })
    .map_err(|e| AuthError::Serve(format!("audit: {e}")))?;
    metrics::counter!(crate::telemetry::names::API_TLS_HANDSHAKE_FAILURES_TOTAL).increment(0);
    let app = crate::emit::http::router(state)
        .merge(crate::dlq::api::router(topology.clone(), audit.clone()));
    serve(
        topology.service.http_listen,
        bound,
        &topology.api,
        app,
        Guard { tokens, audit },
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_env(var: &str) -> Api {
        Api {
            tokens_env: Some(var.into()),
            ..Api::default()
        }
    }

    #[test]
    fn roles_allow_what_the_contract_says() {
        use Need::*;
        assert!(Role::Metrics.allows(Scrape) && !Role::Metrics.allows(Read));
        assert!(Role::Viewer.allows(Read) && !Role::Viewer.allows(Act));
        assert!(Role::Operator.allows(Act) && Role::Operator.allows(Scrape));
        let get = axum::http::Method::GET;
        let post = axum::http::Method::POST;
        assert_eq!(Need::of(&get, "/metrics"), Scrape);
        assert_eq!(Need::of(&get, "/api/v1/pending"), Read);
        assert_eq!(Need::of(&get, "/api/v1/dlq"), Act);
        assert_eq!(Need::of(&post, "/api/v1/dlq/redrive"), Act);
        assert_eq!(Need::of(&get, "/healthz"), Nothing);
    }

    #[test]
    fn tokens_are_kept_as_hashes_and_matched_exactly() {
        std::env::set_var(
            "SYNCLAG_TEST_TOKENS_A",
            "ann:operator:0123456789abcdef0123, bob:metrics:fedcba9876543210fedc",
        );
        let store = TokenStore::load(&api_env("SYNCLAG_TEST_TOKENS_A"))
            .expect("valid")
            .expect("configured");
        assert_eq!(
            store.authenticate("0123456789abcdef0123"),
            Some(Identity {
                name: "ann".into(),
                role: Role::Operator
            })
        );
        assert_eq!(
            store.authenticate("fedcba9876543210fedc").map(|i| i.role),
            Some(Role::Metrics)
        );
        assert_eq!(store.authenticate("0123456789abcdef012"), None);
        assert_eq!(store.authenticate(""), None);
        assert!(!format!("{store:?}").contains("0123"));
    }

    #[test]
    fn a_tokens_file_holds_hashes_and_every_bad_line_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        let token = new_token();
        std::fs::write(
            &path,
            format!(
                "# comment\nprom metrics {}\nbad line\nx admin {}\ny viewer sha256:zz\n",
                hash_token(&token),
                hash_token("t")
            ),
        )
        .expect("write");
        let api = Api {
            tokens_file: Some(path.clone()),
            ..Api::default()
        };
        let Err(AuthError::Entries(problems)) = TokenStore::load(&api) else {
            panic!("bad lines must fail");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("line 3"), "{problems:?}");
        assert!(
            problems[1].contains("`admin` is not a role"),
            "{problems:?}"
        );
        assert!(problems[2].contains("line 5"), "{problems:?}");
        std::fs::write(&path, format!("prom metrics {}\n", hash_token(&token))).expect("write");
        let store = TokenStore::load(&api).expect("valid").expect("configured");
        assert_eq!(
            store.authenticate(&token).map(|i| i.name),
            Some("prom".into())
        );
    }

    #[test]
    fn no_tokens_means_loopback_only_unless_explicitly_insecure() {
        let public: SocketAddr = "0.0.0.0:9187".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:9187".parse().expect("addr");
        assert!(admit(local, &Api::default(), None).is_ok());
        let err = admit(public, &Api::default(), None).expect_err("refused");
        assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
        let insecure = Api {
            insecure_no_auth: true,
            ..Api::default()
        };
        assert!(admit(public, &insecure, None).is_ok());
    }
}
