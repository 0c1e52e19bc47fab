//! The connection to the server ([`Api`]) and one typed method per endpoint the CLI calls:
//! each sends a wire type and reads the wire type the server answers.

use crate::error::{expired_detail, CliError};
use crate::Connection;
use latchkey_domain::policy::JitPolicy;
use latchkey_wire::{
    AuditPage, ComputerList, ComputerView, EnrollmentTokenIssued, IssuedToken, ManagedAccounts,
    NewEnrollmentToken, NewLoginMode, NewTechnician, NewTenant, NewToken, OffboardedView, Rotation,
    SessionList, SessionView, StandingPrivileges, StuckRequests, TechnicianList, TechnicianView,
    TenantList, TenantView, TokenList, Verification,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// How long an ordinary request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one page of an export may take.
const EXPORT_PAGE_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection to the server with a token.
pub struct Api {
    client: reqwest::Client,
    /// The base URL, ending in `/`, that `v1/...` paths are joined to.
    base: Url,
    /// The server as given, for messages.
    shown: String,
    token: String,
    /// `--json`: print answers as JSON.
    pub json: bool,
}

/// `GET /v1/tokens`'s filters.
#[derive(Debug, Default, Serialize)]
pub struct TokenFilter {
    pub limit: u32,
    pub role: Option<latchkey_wire::RoleKind>,
    pub technician_id: Option<Uuid>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

/// `GET /v1/tenants/{id}/sessions`'s filters.
#[derive(Debug, Default, Serialize)]
pub struct SessionFilter {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
    pub computer_id: Option<Uuid>,
    pub technician_id: Option<Uuid>,
    pub limit: Option<u32>,
}

/// `GET /v1/audit`'s filters and page.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AuditFilter {
    pub tenant_id: Option<Uuid>,
    pub computer_id: Option<Uuid>,
    pub technician_id: Option<Uuid>,
    pub account: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: u64,
    pub cursor: Option<String>,
}

/// `GET /v1/events`'s parameters.
#[derive(Debug, Default, Serialize)]
struct EventsQuery<'a> {
    limit: Option<u32>,
    after: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    follow: bool,
}

/// One page of raw events (NDJSON) and where the next one starts.
pub struct EventsPage {
    pub ndjson: Vec<u8>,
    /// `Latchkey-Next-After`: the position to ask for the next page after.
    pub next_after: Option<String>,
}

impl Api {
    pub fn new(connection: Connection) -> Result<Api, CliError> {
        let token = connection
            .token
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or(CliError::NoToken)?;
        let shown = connection.server.trim().trim_end_matches('/').to_owned();
        let mut base = Url::parse(&shown).map_err(|e| CliError::BadServer {
            server: shown.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(CliError::NotHttp { server: shown });
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("latchkey-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &connection.ca_file {
            builder = builder.tls_certs_merge(trusted_cas(path)?);
        }
        let client = builder
            .build()
            .map_err(|e| CliError::HttpClient(root_cause(&e)))?;
        Ok(Api {
            client,
            base,
            shown,
            token,
            json: connection.json,
        })
    }

    /// The server as given, for messages.
    pub fn server(&self) -> &str {
        &self.shown
    }

    // -----------------------------------------------------------------------------------
    // The endpoints

    pub async fn tenants(&self) -> Result<TenantList, CliError> {
        self.get("v1/tenants").await
    }

    pub async fn create_tenant(&self, tenant: &NewTenant) -> Result<TenantView, CliError> {
        self.send(Method::POST, "v1/tenants", Some(tenant)).await
    }

    pub async fn tenant(&self, tenant: Uuid) -> Result<TenantView, CliError> {
        self.get(&format!("v1/tenants/{tenant}")).await
    }

    pub async fn set_login_mode(
        &self,
        tenant: Uuid,
        mode: &NewLoginMode,
    ) -> Result<TenantView, CliError> {
        let path = format!("v1/tenants/{tenant}/login-mode");
        self.send(Method::PUT, &path, Some(mode)).await
    }

    pub async fn set_policy(
        &self,
        tenant: Uuid,
        policy: &JitPolicy,
    ) -> Result<TenantView, CliError> {
        let path = format!("v1/tenants/{tenant}/policy");
        self.send(Method::PUT, &path, Some(policy)).await
    }

    /// Every technician, or the members of `tenant`.
    pub async fn technicians(&self, tenant: Option<Uuid>) -> Result<TechnicianList, CliError> {
        match tenant {
            Some(tenant) => self.get(&format!("v1/tenants/{tenant}/technicians")).await,
            None => self.get("v1/technicians").await,
        }
    }

    pub async fn create_technician(
        &self,
        technician: &NewTechnician,
    ) -> Result<TechnicianView, CliError> {
        self.send(Method::POST, "v1/technicians", Some(technician))
            .await
    }

    pub async fn technician(&self, technician: Uuid) -> Result<TechnicianView, CliError> {
        self.get(&format!("v1/technicians/{technician}")).await
    }

    pub async fn join_tenant(
        &self,
        tenant: Uuid,
        technician: Uuid,
    ) -> Result<TechnicianView, CliError> {
        let path = format!("v1/tenants/{tenant}/technicians/{technician}");
        self.send(Method::PUT, &path, None::<&()>).await
    }

    pub async fn leave_tenant(
        &self,
        tenant: Uuid,
        technician: Uuid,
    ) -> Result<TechnicianView, CliError> {
        let path = format!("v1/tenants/{tenant}/technicians/{technician}");
        self.send(Method::DELETE, &path, None::<&()>).await
    }

    pub async fn offboard(&self, technician: Uuid) -> Result<OffboardedView, CliError> {
        let path = format!("v1/technicians/{technician}/offboard");
        self.send(Method::POST, &path, None::<&()>).await
    }

    pub async fn issue_token(&self, token: &NewToken) -> Result<IssuedToken, CliError> {
        self.send(Method::POST, "v1/tokens", Some(token)).await
    }

    pub async fn tokens(&self, filter: &TokenFilter) -> Result<TokenList, CliError> {
        self.get_query("v1/tokens", filter).await
    }

    pub async fn rotate_token(
        &self,
        token: Uuid,
        rotation: &Rotation,
    ) -> Result<IssuedToken, CliError> {
        let path = format!("v1/tokens/{}/rotate", token.simple());
        self.send(Method::POST, &path, Some(rotation)).await
    }

    pub async fn revoke_token(&self, token: Uuid) -> Result<(), CliError> {
        let path = format!("v1/tokens/{}", token.simple());
        let request = self
            .request(Method::DELETE, &path)?
            .timeout(REQUEST_TIMEOUT);
        self.answer(request).await.map(drop)
    }

    pub async fn create_enrollment_token(
        &self,
        tenant: Uuid,
        token: &NewEnrollmentToken,
    ) -> Result<EnrollmentTokenIssued, CliError> {
        let path = format!("v1/tenants/{tenant}/enrollment-tokens");
        self.send(Method::POST, &path, Some(token)).await
    }

    pub async fn computers(&self, tenant: Uuid) -> Result<ComputerList, CliError> {
        self.get(&format!("v1/tenants/{tenant}/computers")).await
    }

    pub async fn computer(&self, tenant: Uuid, computer: Uuid) -> Result<ComputerView, CliError> {
        self.get(&format!("v1/tenants/{tenant}/computers/{computer}"))
            .await
    }

    pub async fn sessions(
        &self,
        tenant: Uuid,
        filter: &SessionFilter,
    ) -> Result<SessionList, CliError> {
        self.get_query(&format!("v1/tenants/{tenant}/sessions"), filter)
            .await
    }

    pub async fn revoke_session(&self, session: Uuid) -> Result<SessionView, CliError> {
        let path = format!("v1/sessions/{session}/revoke");
        self.send(Method::POST, &path, None::<&()>).await
    }

    pub async fn managed_accounts(&self, tenant: Uuid) -> Result<ManagedAccounts, CliError> {
        self.get(&format!("v1/tenants/{tenant}/accounts")).await
    }

    pub async fn standing_privilege(&self, tenant: Uuid) -> Result<StandingPrivileges, CliError> {
        self.get(&format!("v1/tenants/{tenant}/standing-privilege"))
            .await
    }

    pub async fn stuck_requests(&self, tenant: Uuid) -> Result<StuckRequests, CliError> {
        self.get(&format!("v1/tenants/{tenant}/stuck-requests"))
            .await
    }

    pub async fn audit(&self, filter: &AuditFilter) -> Result<AuditPage, CliError> {
        self.get_query("v1/audit", filter).await
    }

    /// The hash chains of one stream, or of the whole log.
    pub async fn verify(&self, stream: Option<&str>) -> Result<Verification, CliError> {
        #[derive(Serialize)]
        struct Query<'a> {
            stream: Option<&'a str>,
        }
        self.get_query("v1/verify", &Query { stream }).await
    }

    /// One page of raw events after `after`.
    pub async fn events(&self, after: Option<&str>, limit: u32) -> Result<EventsPage, CliError> {
        let query = EventsQuery {
            limit: Some(limit),
            after,
            follow: false,
        };
        let request = self
            .request(Method::GET, "v1/events")?
            .query(&query)
            .timeout(EXPORT_PAGE_TIMEOUT);
        let response = self.answer(request).await?;
        let next_after = response
            .headers()
            .get("Latchkey-Next-After")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let ndjson = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?
            .to_vec();
        Ok(EventsPage { ndjson, next_after })
    }

    /// The event log followed live: the open answer, read chunk by chunk (no timeout).
    pub async fn follow_events(&self, after: Option<&str>) -> Result<Response, CliError> {
        let query = EventsQuery {
            limit: None,
            after,
            follow: true,
        };
        let request = self.request(Method::GET, "v1/events")?.query(&query);
        self.answer(request).await
    }

    // -----------------------------------------------------------------------------------
    // Talking to the server

    /// A request to `path` (relative to the server's base, e.g. `v1/tenants`).
    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, CliError> {
        let url = self.base.join(path).map_err(|e| CliError::Url {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(self.client.request(method, url).bearer_auth(&self.token))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(Method::GET, path, None::<&()>).await
    }

    async fn get_query<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T, CliError> {
        let request = self
            .request(Method::GET, path)?
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        self.read(request).await
    }

    /// Sends `body` (if any) as JSON and reads the answer as a `T`.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CliError> {
        let mut request = self.request(method, path)?.timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.read(request).await
    }

    /// Sends a request and reads the JSON answer as a `T`.
    async fn read<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, CliError> {
        let response = self.answer(request).await?;
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&e))?;
        serde_json::from_str(&text).map_err(|e| {
            let (server, cause) = (self.shown.clone(), e.to_string());
            if e.is_data() {
                CliError::Unreadable { server, cause }
            } else {
                CliError::NotJson { server, cause }
            }
        })
    }

    /// Sends a request; any answer but a success is turned into the clear error it stands for.
    async fn answer(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            // An expired token is told apart: the fix is a new token, not a typo hunt.
            return Err(CliError::TokenRefused {
                expired: expired_detail(&body),
            });
        }
        Err(CliError::Refused { status, body })
    }

    pub(crate) fn transport_error(&self, e: &reqwest::Error) -> CliError {
        let cause = root_cause(e);
        let server = self.shown.clone();
        if e.is_connect() && cause.contains("certificate") {
            CliError::Untrusted { server, cause }
        } else if e.is_connect() {
            CliError::Unreachable { server, cause }
        } else if e.is_timeout() {
            CliError::Timeout { server }
        } else if e.is_builder() {
            CliError::Request { cause }
        } else {
            CliError::Transport { server, cause }
        }
    }
}

/// The innermost cause of an error, which is the one that says what happened
/// ("Connection refused (os error 111)").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The CA certificates of `--ca-file`, to trust besides the system's.
fn trusted_cas(path: &Path) -> Result<Vec<reqwest::Certificate>, CliError> {
    let refused = |problem: String| CliError::CaFile {
        path: path.display().to_string(),
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| refused(format!("cannot read it: {e}")))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| refused(format!("not a PEM certificate bundle: {e}")))?;
    if certificates.is_empty() {
        return Err(refused(
            "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_SERVER;

    fn connection(server: &str, token: Option<&str>) -> Connection {
        Connection {
            server: server.to_owned(),
            token: token.map(str::to_owned),
            ca_file: None,
            json: false,
        }
    }

    #[test]
    fn the_server_url_is_checked_and_the_token_required() {
        let err = |c| Api::new(c).err().unwrap().to_string();
        assert!(err(connection("http://x", None)).contains("LATCHKEY_TOKEN"));
        assert!(err(connection("ftp://x", Some("t"))).starts_with("--server ftp://x"));
        assert!(err(connection("not a url", Some("t"))).starts_with("--server"));
        let api = Api::new(connection("https://h.example/latchkey/", Some("t"))).unwrap();
        assert_eq!(
            api.base.join("v1/tenants").unwrap().as_str(),
            "https://h.example/latchkey/v1/tenants"
        );
        assert!(DEFAULT_SERVER.starts_with("http://"));
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let with_ca = |path: &Path| {
            Api::new(Connection {
                ca_file: Some(path.to_owned()),
                ..connection("https://h.example", Some("t"))
            })
        };
        let missing = dir.path().join("missing.pem");
        let err = with_ca(&missing).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("--ca-file {}: cannot read it", missing.display())),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = with_ca(&empty).err().unwrap().to_string();
        assert!(err.contains("no certificate in it"), "{err}");
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        assert!(with_ca(&good).is_ok());
    }
}
