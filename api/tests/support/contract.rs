//! The API contract, as the end-to-end tests hold the server to it: every 2xx answer a test
//! sees from `/v1` ([`super::Server::request`]) must be an answer the served `/openapi.json`
//! declares for that operation and status, and its body must match the declared schema. A
//! handler that answers something its documentation does not say fails the test that saw it.
//!
//! Stricter than a client need be: the document lets clients ignore fields it does not name
//! (it is written to grow), but here an object may carry only the properties its schema names,
//! so a field added to an answer and not to the document is caught too.

use jsonschema::Validator;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Contract {
    document: Value,
    /// The components with every object made strict, shared by every validator.
    components: Value,
    operations: Vec<Operation>,
    validators: Mutex<HashMap<String, Arc<Validator>>>,
}

struct Operation {
    method: String,
    template: String,
    /// `None` for a `{parameter}`.
    segments: Vec<Option<String>>,
}

impl Operation {
    /// How many literal segments match `path`'s, or `None` if it does not match.
    fn matches(&self, segments: &[&str]) -> Option<usize> {
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut literal = 0;
        for (mine, theirs) in self.segments.iter().zip(segments) {
            match mine {
                Some(text) if text == theirs => literal += 1,
                Some(_) => return None,
                None if theirs.is_empty() => return None,
                None => {}
            }
        }
        Some(literal)
    }
}

impl Contract {
    pub fn new(document: Value) -> Contract {
        let mut operations = Vec::new();
        for (template, methods) in document["paths"].as_object().expect("paths") {
            for method in methods.as_object().expect("operations").keys() {
                operations.push(Operation {
                    method: method.to_uppercase(),
                    template: template.clone(),
                    segments: template
                        .split('/')
                        .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                        .collect(),
                });
            }
        }
        let mut components = document["components"].clone();
        strict(&mut components);
        Contract {
            document,
            components,
            operations,
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// Why an answer breaks the contract, if it does. Answers from `/v1` are checked: a
    /// success must be one its operation documents, with the body it documents; a problem
    /// (4xx, 5xx) of an operation that exists must have a documented status and be a
    /// `Problem`. (A path or method that does not exist answers 404 or 405 outside any
    /// operation.)
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: &str,
        body: &str,
    ) -> Result<(), String> {
        let path = path.split('?').next().unwrap_or(path);
        if !path.starts_with("/v1/") || status < 200 {
            return Ok(());
        }
        let success = (200..300).contains(&status);
        let segments: Vec<&str> = path.split('/').collect();
        let operation = self
            .operations
            .iter()
            .filter(|o| o.method == method)
            .filter_map(|o| Some((o.matches(&segments)?, o)))
            .max_by_key(|(literal, _)| *literal)
            .map(|(_, o)| o);
        let operation = match operation {
            Some(operation) => operation,
            None if success => {
                return Err(format!(
                    "{method} {path} answered {status}: no such operation"
                ))
            }
            None => return Ok(()),
        };
        let name = format!("{method} {}", operation.template);
        let responses =
            &self.document["paths"][&operation.template][method.to_lowercase()]["responses"];
        let range = format!("{}XX", status / 100);
        let response = responses
            .get(status.to_string())
            .or_else(|| responses.get(&range))
            .ok_or_else(|| {
                format!("{name} answered {status}, which it does not document: {body}")
            })?;
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return match body.is_empty() {
                true => Ok(()),
                false => Err(format!(
                    "{name} {status}: documented without a body, answered {content_type} {body}"
                )),
            };
        };
        let schema = content.get(&media).map(|c| &c["schema"]).ok_or_else(|| {
            format!(
                "{name} {status}: answered {content_type:?}, documented as {:?}",
                content.keys().collect::<Vec<_>>()
            )
        })?;
        let key = |what: &str| format!("{name} {status} {media} {what}");
        match media.as_str() {
            "application/json" | "application/problem+json" => {
                let value: Value = serde_json::from_str(body)
                    .map_err(|e| format!("{name} {status}: not JSON ({e}): {body}"))?;
                self.validate(&key("body"), schema, &value, &name, status)
            }
            "application/x-ndjson" => {
                for line in body.lines().filter(|l| !l.is_empty()) {
                    let value: Value = serde_json::from_str(line).map_err(|e| {
                        format!("{name} {status}: a line is not JSON ({e}): {line}")
                    })?;
                    self.validate(
                        &key("line"),
                        &schema["x-line-schema"],
                        &value,
                        &name,
                        status,
                    )?;
                }
                Ok(())
            }
            "text/event-stream" => {
                for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
                    let value: Value = serde_json::from_str(data).map_err(|e| {
                        format!("{name} {status}: event data is not JSON ({e}): {data}")
                    })?;
                    self.validate(
                        &key("event"),
                        &schema["x-event-data-schema"],
                        &value,
                        &name,
                        status,
                    )?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn validate(
        &self,
        key: &str,
        schema: &Value,
        value: &Value,
        name: &str,
        status: u16,
    ) -> Result<(), String> {
        let validator = self.validator(key, schema)?;
        let problems: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        match problems.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "{name} {status}: the answer does not match the document:\n  {}\nanswer: {value}",
                problems.join("\n  ")
            )),
        }
    }

    fn validator(&self, key: &str, schema: &Value) -> Result<Arc<Validator>, String> {
        let mut validators = self.validators.lock().unwrap();
        if let Some(validator) = validators.get(key) {
            return Ok(validator.clone());
        }
        // The schema's `#/components/...` references resolve against this root.
        let mut root = schema.clone();
        strict(&mut root);
        let root = match root {
            Value::Object(mut object) => {
                object.insert("components".into(), self.components.clone());
                Value::Object(object)
            }
            other => other,
        };
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .map(Arc::new)
            .map_err(|e| format!("{key}: the document's schema does not compile: {e}"))?;
        validators.insert(key.to_owned(), validator.clone());
        Ok(validator)
    }
}

/// Makes every object schema that names its properties refuse others (not the fragments that
/// state a rule about some properties, such as a `not` or `anyOf` without `"type"`).
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.get("type").and_then(Value::as_str) == Some("object")
                && object.contains_key("properties")
                && !object.contains_key("additionalProperties")
                && !object.contains_key("unevaluatedProperties")
            {
                object.insert("unevaluatedProperties".into(), Value::Bool(false));
            }
            for (_, inner) in object.iter_mut() {
                strict(inner);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// The schema object an operation documents for `status` (for tests of the document itself).
pub fn response_schema<'a>(
    document: &'a Value,
    method: &str,
    path: &str,
    status: u16,
) -> &'a Value {
    &document["paths"][path][method.to_lowercase()]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"]
}
