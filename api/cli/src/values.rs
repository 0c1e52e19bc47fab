//! Flag values: log positions, times, durations, and the words of the enums the domain and
//! the wire types declare ([`Words`]), so the CLI names no such word itself.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::ffi::OsStr;
use std::marker::PhantomData;
use std::time::Duration;

/// A clap value parser for an enum of unit variants declared elsewhere (the domain's
/// `LoginMode`, the wire's `RoleKind`, …): its words are the ones serde writes, read from
/// the type's JSON Schema with each variant's doc comment as help, and a word is parsed by
/// serde. A word with `_` is taken with `-` too (`remove-from-group`).
pub struct Words<T> {
    words: Vec<(String, Option<String>)>,
    of: PhantomData<fn() -> T>,
}

impl<T> Clone for Words<T> {
    fn clone(&self) -> Self {
        Self {
            words: self.words.clone(),
            of: PhantomData,
        }
    }
}

impl<T: JsonSchema + DeserializeOwned + serde::Serialize> Words<T> {
    /// Every word of `T`.
    pub fn all() -> Self {
        Self::except(&[])
    }

    /// Every word of `T` but those of `left_out`.
    pub fn except(left_out: &[T]) -> Self {
        let left_out: Vec<Value> = left_out
            .iter()
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect();
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
        let words = words_of(&schema)
            .into_iter()
            .filter(|(word, _)| !left_out.contains(&Value::String(word.clone())))
            .collect();
        Self {
            words,
            of: PhantomData,
        }
    }
}

/// The words a schema of string constants allows (`enum`, or `oneOf` of `const`s where the
/// variants have doc comments), with their descriptions.
fn words_of(schema: &Value) -> Vec<(String, Option<String>)> {
    if let Some(words) = schema.get("enum").and_then(Value::as_array) {
        return words
            .iter()
            .filter_map(|w| Some((w.as_str()?.to_owned(), None)))
            .collect();
    }
    let mut found = Vec::new();
    for key in ["oneOf", "anyOf"] {
        for variant in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let help = variant
                .get("description")
                .and_then(Value::as_str)
                .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "));
            match variant.get("const").and_then(Value::as_str) {
                Some(word) => found.push((word.to_owned(), help)),
                None => found.extend(words_of(variant)),
            }
        }
    }
    found
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> TypedValueParser for Words<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let parser = PossibleValuesParser::new(self.possible());
        let word = parser.parse_ref(cmd, arg, value)?;
        let word = word.replace('-', "_");
        serde_json::from_value(Value::String(word)).map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{e}\n")).with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.possible().into_iter()))
    }
}

impl<T> Words<T> {
    fn possible(&self) -> Vec<PossibleValue> {
        self.words
            .iter()
            .map(|(word, help)| {
                let mut value = PossibleValue::new(word.clone());
                if word.contains('_') {
                    value = value.alias(word.replace('_', "-"));
                }
                match help {
                    Some(help) => value.help(help.clone()),
                    None => value,
                }
            })
            .collect()
    }
}

/// A duration as written on the command line and in the config file: a whole number with
/// `d`, `h`, `m` or `s` (`90d`, `12h`, `3600s`; seconds when no unit is given).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => 0,
    };
    let seconds = digits
        .parse::<u64>()
        .ok()
        .filter(|_| scale > 0)
        .and_then(|n| n.checked_mul(scale));
    match seconds {
        Some(seconds) => Ok(Duration::from_secs(seconds)),
        None => Err(format!(
            "a duration must be a whole number with d, h, m or s, e.g. 90d, 12h, 3600s (got \
             {text:?})"
        )),
    }
}

/// `--expires-in`: a duration (`30d`, `12h`, `3600s`, `3600`) as seconds.
pub fn duration_seconds(text: &str) -> Result<u64, String> {
    parse_duration(text).map(|d| d.as_secs())
}

/// A log position `<commit>.<prepare>` or `<commit>`.
pub fn position(text: &str) -> Result<String, String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match text.split_once('.') {
        Some((commit, prepare)) => digits(commit) && digits(prepare),
        None => digits(text),
    };
    if ok {
        Ok(text.to_owned())
    } else {
        Err("expected a log position like 42.42 (commit.prepare)".into())
    }
}

/// An RFC 3339 time or a date, as the RFC 3339 UTC text the server takes.
pub fn time(text: &str) -> Result<String, String> {
    use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc();
        return Ok(midnight.to_rfc3339_opts(SecondsFormat::Secs, true));
    }
    Err("expected an RFC 3339 time like 2026-11-23T09:00:00Z, or a date like 2026-11-23".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_domain::policy::{CheckInAction, LoginMode};
    use latchkey_wire::RoleKind;

    #[test]
    fn positions_and_times_are_checked() {
        assert_eq!(position("42.41").unwrap(), "42.41");
        assert_eq!(position("7").unwrap(), "7");
        assert!(position("4x").is_err());
        assert!(position(".3").is_err());
        assert_eq!(time("2026-11-23").unwrap(), "2026-11-23T00:00:00Z");
        assert_eq!(
            time("2026-11-23T10:00:00+01:00").unwrap(),
            "2026-11-23T09:00:00Z"
        );
        assert!(time("yesterday").is_err());
    }

    #[test]
    fn the_words_are_the_types_own() {
        let words = |w: Vec<(String, Option<String>)>| -> Vec<String> {
            w.into_iter().map(|(word, _)| word).collect()
        };
        assert_eq!(
            words(Words::<LoginMode>::all().words),
            ["named", "shared", "ephemeral"]
        );
        assert_eq!(
            words(Words::<CheckInAction>::all().words),
            ["remove_from_group", "delete_account"]
        );
        assert_eq!(
            words(Words::<RoleKind>::except(&[RoleKind::Agent]).words),
            ["msp_admin", "tenant_admin", "technician", "auditor"]
        );
        let command = clap::Command::new("t").arg(
            clap::Arg::new("role")
                .long("role")
                .value_parser(Words::<RoleKind>::all()),
        );
        let parse = |word: &str| {
            command
                .clone()
                .try_get_matches_from(["t", "--role", word])
                .map(|m| *m.get_one::<RoleKind>("role").unwrap())
        };
        assert_eq!(parse("msp_admin").unwrap(), RoleKind::MspAdmin);
        assert_eq!(parse("tenant-admin").unwrap(), RoleKind::TenantAdmin);
        assert!(parse("root").is_err());
    }
}
