//! Every error the HTTP API returns, as an RFC 9457 problem document
//! (`application/problem+json`) naming the field at fault where there is one. The mapping
//! from domain and store errors lives here once. A problem never carries a secret, and
//! internal details (SQL, paths) stay in the server's log, not in the response.

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use latchkey_app::commands::CommandError;
use latchkey_domain::names::InvalidValue;
use latchkey_domain::{DomainError, ErrorKind};
use latchkey_store::StoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// The body of an error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A URN naming the kind of problem, stable for clients to match on.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field at fault, e.g. `username` or `policy.password.length`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    problem: Problem,
    /// Seconds for a `Retry-After` header (429). A `u32`: it keeps the error small, and a
    /// day is the longest window anyway.
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &str, detail: impl Into<String>) -> Self {
        Self {
            status,
            problem: Problem {
                kind: format!("urn:latchkey:problem:{kind}"),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: status.as_u16(),
                detail: detail.into(),
                field: None,
            },
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.problem.field = Some(field.into());
        self
    }

    pub fn bad_request(field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail).with_field(field)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("{what} does not exist"),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API token as `Authorization: Bearer <token>`",
        )
    }

    /// Too many failed authentications: refused without looking at the token (429 with
    /// `Retry-After`).
    pub fn too_many_attempts(limited: crate::ratelimit::Limited) -> Self {
        use crate::ratelimit::LimitedBy;
        let whose = match limited.by {
            LimitedBy::Address => "from this client address",
            LimitedBy::TokenId => "with this token id",
        };
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-attempts",
            format!(
                "too many failed authentications {whose}; no token is checked until the \
                 count drains: try again in {} seconds",
                limited.retry_after
            ),
        );
        error.retry_after = Some(u32::try_from(limited.retry_after).unwrap_or(u32::MAX));
        error
    }

    /// A well-formed, right token that has expired: the client should get a new one (or
    /// rotate before expiry next time).
    pub fn token_expired(at: chrono::DateTime<chrono::Utc>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "token-expired",
            format!(
                "the API token expired at {}; ask for a new one, or rotate tokens before \
                 they expire (POST /v1/tokens/{{token_id}}/rotate)",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        )
    }

    /// The disk (or the database server's) is full, so the write was refused whole: 507,
    /// and a retry succeeds once space is freed. Reads go on being served.
    pub fn storage_full() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage-full",
            "the server's storage is full, so nothing was written; try again once an \
             operator has freed space (see /healthz)",
        )
    }

    /// A failure of `what` (a store): 507 if the storage is full, else an internal error
    /// whose details go to the log only.
    pub fn failed(what: &str, error: &(dyn std::error::Error + 'static)) -> Self {
        if latchkey_sql::is_storage_full(error) {
            tracing::error!(error = %error, "{what} failed: the storage is full");
            return Self::storage_full();
        }
        let reference = uuid::Uuid::now_v7().to_string();
        tracing::error!(error = %error, %reference, "{what} failed");
        Self::internal(&reference)
    }

    /// Something broke inside; the details go to the log under `reference`, not to the client.
    pub fn internal(reference: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the server could not complete the request (reference {reference})"),
        )
    }

    pub fn problem(&self) -> &Problem {
        &self.problem
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.problem.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(&self.problem)
    }
}

impl From<InvalidValue> for ApiError {
    fn from(e: InvalidValue) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-value",
            e.to_string(),
        )
        .with_field(e.field)
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        if let DomainError::Invalid(invalid) = e {
            return invalid.into();
        }
        let (status, kind) = match e.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not-found"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::Rejected => (StatusCode::UNPROCESSABLE_ENTITY, "rule"),
        };
        let error = Self::new(status, kind, e.to_string());
        match e.field() {
            Some(field) => error.with_field(field),
            None => error,
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Domain(e) => e.into(),
            CommandError::Contended { .. } => {
                Self::new(StatusCode::CONFLICT, "contended", e.to_string())
            }
            CommandError::Store(StoreError::Unavailable(_)) => {
                tracing::error!(error = %e, "event store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the event store is unavailable; try again",
                )
            }
            CommandError::Store(StoreError::Full(_)) => {
                tracing::error!(error = %e, "the event store's storage is full");
                Self::storage_full()
            }
            other => Self::failed("command", &other),
        }
    }
}

/// The canonical form of a request's JSON body, hashed: [`JsonBody`] leaves
/// it in the request's extensions, so a key re-used with another body is recognised.
#[derive(Debug, Clone)]
pub struct BodyFingerprint(pub String);

impl BodyFingerprint {
    pub fn of(body: &serde_json::Value) -> Self {
        use sha2::{Digest, Sha256};
        let canonical = serde_json::to_vec(body).expect("a JSON value serialises");
        Self(hex::encode(Sha256::digest(canonical)))
    }
}

impl From<latchkey_app::technicians::TechnicianError> for ApiError {
    fn from(e: latchkey_app::technicians::TechnicianError) -> Self {
        match e {
            latchkey_app::technicians::TechnicianError::Command(e) => e.into(),
            latchkey_app::technicians::TechnicianError::Tokens(e) => {
                Self::failed("token store", &e)
            }
        }
    }
}

/// The largest request body any endpoint accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON request body, parsed into `T` with every failure a problem naming the field:
/// 415 for another media type, 413 over [`BODY_LIMIT`], 400 for malformed JSON, unknown or
/// missing fields, wrong types and values our types refuse.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = req.content_type() == "application/json";
        let bytes = web::Bytes::from_request(req, payload);
        let request = req.clone();
        Box::pin(async move {
            if !is_json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content-type",
                    "send the body as Content-Type: application/json",
                ));
            }
            let bytes = bytes.await.map_err(|e| {
                if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-large",
                        format!("the request body is larger than {BODY_LIMIT} bytes"),
                    )
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad-body", e.to_string())
                }
            })?;
            let value = parse_json(&bytes).map(JsonBody)?;
            // What a retry with the same Idempotency-Key must send again.
            if let Ok(canonical) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                request
                    .extensions_mut()
                    .insert(BodyFingerprint::of(&canonical));
            }
            Ok(value)
        })
    }
}

/// Parses a JSON body, naming the field at fault in the problem.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let problem = ApiError::new(StatusCode::BAD_REQUEST, "bad-json", message.clone());
        let named = field_named_in(&message);
        // The path names the field, except where the refusal comes from the object that
        // holds it (a missing field, or a rule across fields such as the policy's reuse and
        // delete-on-check-in): then the path names that object and the message the field.
        let field = match (named, path.as_str()) {
            (Some(name), ".") => Some(name),
            (Some(name), path) if path == name || path.ends_with(&format!(".{name}")) => {
                Some(path.to_owned())
            }
            (Some(name), parent)
                if message.starts_with("missing field") || is_object_at(bytes, parent) =>
            {
                Some(format!("{parent}.{name}"))
            }
            (_, ".") => None,
            (_, path) => Some(path.to_owned()),
        };
        match field {
            Some(field) => problem.with_field(field),
            None => problem,
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad-json", e.to_string()))?;
    Ok(value)
}

/// Whether the JSON document holds an object at `path` (serde_path_to_error's notation:
/// `a.b[2].c`).
fn is_object_at(bytes: &[u8], path: &str) -> bool {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return false;
    };
    for segment in path.split('.') {
        let (key, indices) = match segment.find('[') {
            Some(at) => (&segment[..at], &segment[at..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            match value.get_mut(key) {
                Some(inner) => value = inner.take(),
                None => return false,
            }
        }
        for index in indices.split(['[', ']']).filter(|i| !i.is_empty()) {
            match index.parse::<usize>().ok().and_then(|i| value.get_mut(i)) {
                Some(inner) => value = inner.take(),
                None => return false,
            }
        }
    }
    value.is_object()
}

/// The field a serde message is about: "unknown field `x`", "missing field `x`", or one of
/// our value types' messages, which start with the field name.
fn field_named_in(message: &str) -> Option<String> {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(marker).nth(1) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    let first = message.split_whitespace().next()?;
    let looks_like_field = first
        .chars()
        .all(|c| c.is_ascii_lowercase() || "_.".contains(c));
    // Our value types' messages (`InvalidValue`) are "<field> <rule> (got '<value>')".
    let ours = message.contains(" must ") || message.contains(" (got '");
    (looks_like_field && ours).then(|| first.to_owned())
}

/// The body-size limit every endpoint uses.
pub fn payload_config() -> web::PayloadConfig {
    web::PayloadConfig::new(BODY_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test as actix_test, App};
    use latchkey_domain::names::Username;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct NewTechnician {
        username: Username,
        email: String,
    }

    async fn create(_: JsonBody<NewTechnician>) -> HttpResponse {
        HttpResponse::Created().finish()
    }

    async fn call(body: &'static str, content_type: &str) -> (u16, serde_json::Value, String) {
        let app = actix_test::init_service(
            App::new()
                .app_data(payload_config())
                .route("/t", web::post().to(create)),
        )
        .await;
        let request = actix_test::TestRequest::post()
            .uri("/t")
            .insert_header((header::CONTENT_TYPE, content_type))
            .set_payload(body)
            .to_request();
        let response = actix_test::call_service(&app, request).await;
        let status = response.status().as_u16();
        let media = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = actix_test::read_body(response).await;
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, json, media)
    }

    const JSON: &str = "application/json";

    #[actix_web::test]
    async fn a_good_body_passes() {
        let (status, _, _) = call(r#"{"username":"nik","email":"nik@nikpot.com"}"#, JSON).await;
        assert_eq!(status, 201);
    }

    #[actix_web::test]
    async fn malformed_json_is_a_400_problem() {
        let (status, body, media) = call(r#"{"username":"#, JSON).await;
        assert_eq!(status, 400);
        assert_eq!(media, "application/problem+json");
        assert_eq!(body["type"], "urn:latchkey:problem:bad-json");
        assert_eq!(body["status"], 400);
    }

    #[actix_web::test]
    async fn an_unknown_field_is_named() {
        let body = r#"{"username":"nik","email":"a@b.cd","surprise":1}"#;
        let (status, problem, _) = call(body, JSON).await;
        assert_eq!(status, 400);
        assert_eq!(problem["field"], "surprise");
    }

    #[actix_web::test]
    async fn a_missing_field_and_a_bad_value_are_named() {
        let (_, problem, _) = call(r#"{"username":"nik"}"#, JSON).await;
        assert_eq!(problem["field"], "email");
        let (status, problem, _) = call(r#"{"username":"Nik!","email":"a@b.cd"}"#, JSON).await;
        assert_eq!(status, 400);
        assert_eq!(problem["field"], "username");
        assert!(problem["detail"]
            .as_str()
            .unwrap()
            .contains("must be 1-19 characters"));
    }

    #[actix_web::test]
    async fn a_wrong_type_and_a_wrong_media_type_are_refused() {
        let (status, problem, _) = call(r#"{"username":5,"email":"a@b.cd"}"#, JSON).await;
        assert_eq!(status, 400);
        assert_eq!(problem["field"], "username");
        let (status, _, _) = call(r#"{"username":"nik","email":"a@b.cd"} trailing"#, JSON).await;
        assert_eq!(status, 400);
        let (status, _, _) = call(r#"{"username":"nik","email":"a@b.cd"}"#, "text/plain").await;
        assert_eq!(status, 415);
    }

    #[actix_web::test]
    async fn an_oversized_body_is_a_413() {
        let big: &'static str =
            Box::leak(format!(r#"{{"username":"{}"}}"#, "a".repeat(70_000)).into_boxed_str());
        let (status, problem, _) = call(big, JSON).await;
        assert_eq!(status, 413);
        assert_eq!(problem["type"], "urn:latchkey:problem:too-large");
    }

    /// A rule across fields is refused by the object that holds them, so serde's path names
    /// the object; the problem must still name the field (`reuse_existing_account`), at the
    /// top level and nested.
    #[test]
    fn a_refusal_by_an_object_names_the_field_inside_it() {
        use latchkey_domain::policy::{CheckInAction, JitPolicy};
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Wrapper {
            policy: JitPolicy,
            duration_minutes: latchkey_domain::policy::SessionLength,
        }
        let mut policy = serde_json::to_value(JitPolicy::default()).unwrap();
        policy["reuse_existing_account"] = true.into();
        policy["on_check_in"] = serde_json::to_value(CheckInAction::DeleteAccount).unwrap();
        let field = |body: serde_json::Value| -> Option<String> {
            let bytes = serde_json::to_vec(&body).unwrap();
            parse_json::<Wrapper>(&bytes)
                .map(|_| ())
                .or_else(|_| parse_json::<JitPolicy>(&bytes).map(|_| ()))
                .unwrap_err()
                .problem()
                .field
                .clone()
        };
        assert_eq!(
            field(policy.clone()).as_deref(),
            Some("reuse_existing_account")
        );
        let nested = serde_json::json!({"policy": policy, "duration_minutes": 5});
        assert_eq!(
            parse_json::<Wrapper>(&serde_json::to_vec(&nested).unwrap())
                .unwrap_err()
                .problem()
                .field
                .as_deref(),
            Some("policy.reuse_existing_account")
        );
        // A leaf's own refusal names the leaf, whatever field name its type reports.
        let fine = serde_json::to_value(JitPolicy::default()).unwrap();
        let long = serde_json::json!({"policy": fine, "duration_minutes": 99999});
        assert_eq!(
            parse_json::<Wrapper>(&serde_json::to_vec(&long).unwrap())
                .unwrap_err()
                .problem()
                .field
                .as_deref(),
            Some("duration_minutes")
        );
    }

    #[test]
    fn a_rule_that_knows_its_field_names_it() {
        let e = ApiError::from(DomainError::SessionLongerThanAllowed {
            wanted: 90,
            max_minutes: 30,
        });
        assert_eq!(e.status_code().as_u16(), 422);
        assert_eq!(e.problem().field.as_deref(), Some("duration_minutes"));
    }

    #[test]
    fn domain_errors_map_to_their_status() {
        let status = |e: DomainError| ApiError::from(e).status_code().as_u16();
        assert_eq!(status(DomainError::TenantNotRegistered), 404);
        assert_eq!(status(DomainError::TenantAlreadyRegistered), 409);
        assert_eq!(status(DomainError::TechnicianOffboarded), 422);
        let taken = ApiError::from(DomainError::UsernameTaken {
            username: Username::parse("nik").unwrap(),
        });
        assert_eq!(taken.status_code().as_u16(), 409);
        assert_eq!(taken.problem().field.as_deref(), Some("username"));
        let taken = ApiError::from(DomainError::EmailTaken {
            email: latchkey_domain::names::Email::parse("Nik@nikpot.com").unwrap(),
        });
        assert_eq!(taken.status_code().as_u16(), 409);
        assert_eq!(taken.problem().field.as_deref(), Some("email"));
        let invalid = Username::parse("X").unwrap_err();
        let e = ApiError::from(DomainError::Invalid(invalid));
        assert_eq!(e.status_code().as_u16(), 422);
        assert_eq!(e.problem().field.as_deref(), Some("username"));
    }
}
