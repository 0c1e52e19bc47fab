//! A handler's successful answer, typed by what it carries: the route table reads the body's
//! JSON Schema from the handler's return type ([`Answers`]), so what `/openapi.json` promises
//! is what the handler serialises. A handler never answers an untyped `serde_json::Value`.

use crate::problem::ApiError;
use actix_web::body::BoxBody;
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, Responder};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;
use std::marker::PhantomData;

/// The success body of an operation as the document shows it: its media type and schema.
pub struct Body {
    pub media_type: &'static str,
    pub schema: Schema,
}

/// Implemented by every handler's return type: what its success answer carries.
pub trait Answers {
    /// `None`: no body (204).
    fn body(generator: &mut SchemaGenerator) -> Option<Body>;
}

impl<A: Answers> Answers for Result<A, ApiError> {
    fn body(generator: &mut SchemaGenerator) -> Option<Body> {
        A::body(generator)
    }
}

/// A JSON answer whose body is a `T`.
pub struct Json<T> {
    response: HttpResponse,
    body: PhantomData<fn() -> T>,
}

impl<T: Serialize> Json<T> {
    /// 200 with `body`.
    pub fn ok(body: &T) -> Self {
        Self::new(StatusCode::OK, body)
    }

    /// 201 with `body`, and `Location` naming what was created.
    pub fn created(body: &T, location: &str) -> Self {
        let mut answer = Self::new(StatusCode::CREATED, body);
        if let Ok(value) = header::HeaderValue::from_str(location) {
            answer
                .response
                .headers_mut()
                .insert(header::LOCATION, value);
        }
        answer
    }

    pub fn new(status: StatusCode, body: &T) -> Self {
        Self::made(HttpResponse::build(status).json(body))
    }
}

impl<T> Json<T> {
    /// An answer already made whose body is a `T` (a stored answer replayed).
    pub(super) fn made(response: HttpResponse) -> Self {
        Self {
            response,
            body: PhantomData,
        }
    }

    /// Marks an answer that carries a secret as never to be cached.
    pub fn no_store(mut self) -> Self {
        self.response = super::no_store(self.response);
        self
    }
}

impl<T> Responder for Json<T> {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        self.response
    }
}

impl<T: JsonSchema> Answers for Json<T> {
    fn body(generator: &mut SchemaGenerator) -> Option<Body> {
        Some(Body {
            media_type: "application/json",
            schema: generator.subschema_for::<T>(),
        })
    }
}

/// 204: done, nothing to say.
pub struct NoContent;

impl Responder for NoContent {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        HttpResponse::NoContent().finish()
    }
}

impl Answers for NoContent {
    fn body(_: &mut SchemaGenerator) -> Option<Body> {
        None
    }
}

/// A body of lines (`application/x-ndjson`), each a JSON `T`.
pub struct Lines<T> {
    response: HttpResponse,
    line: PhantomData<fn() -> T>,
}

impl<T> Lines<T> {
    /// `response` must carry lines of `T`: see [`Lines::line`].
    pub fn new(response: HttpResponse) -> Self {
        Self {
            response,
            line: PhantomData,
        }
    }
}

impl<T: Serialize> Lines<T> {
    /// One line of the body.
    pub fn line(value: &T) -> String {
        let mut line = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
        line.push('\n');
        line
    }
}

impl<T> Responder for Lines<T> {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        self.response
    }
}

impl<T: JsonSchema> Answers for Lines<T> {
    fn body(generator: &mut SchemaGenerator) -> Option<Body> {
        // OpenAPI 3.1 cannot say "each line is a T" (3.2's itemSchema can): the line's schema
        // rides along as an extension.
        let line = generator.subschema_for::<T>();
        Some(Body {
            media_type: "application/x-ndjson",
            schema: json_schema!({
                "type": "string",
                "description": "one JSON value per line, each as x-line-schema describes",
                "x-line-schema": line,
            }),
        })
    }
}

/// A server-sent event stream (`text/event-stream`) whose events carry `T` as their data.
pub struct Events<T> {
    response: HttpResponse,
    event: PhantomData<fn() -> T>,
}

impl<T> Events<T> {
    pub fn new(response: HttpResponse) -> Self {
        Self {
            response,
            event: PhantomData,
        }
    }
}

impl<T> Responder for Events<T> {
    type Body = BoxBody;

    fn respond_to(self, _: &HttpRequest) -> HttpResponse {
        self.response
    }
}

impl<T: JsonSchema> Answers for Events<T> {
    fn body(generator: &mut SchemaGenerator) -> Option<Body> {
        let data = generator.subschema_for::<T>();
        Some(Body {
            media_type: "text/event-stream",
            schema: json_schema!({
                "type": "string",
                "description": "server-sent events; each event's data is JSON as \
                    x-event-data-schema describes",
                "x-event-data-schema": data,
            }),
        })
    }
}
