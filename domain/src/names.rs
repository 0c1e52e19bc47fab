//! Validated value types: every name that reaches `decide` has passed one of these
//! constructors ("parse, don't validate"). Deserialising goes through the same constructors,
//! so an event or request can never smuggle in a value a constructor would refuse.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// A value that did not pass its constructor. Names the field and the rule; it quotes the
/// offending value, so these types must never hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {rule} (got '{got}')")]
pub struct InvalidValue {
    pub field: &'static str,
    pub rule: &'static str,
    pub got: String,
}

/// Declares a string newtype whose only constructor is `parse`, with a JSON Schema that
/// states the same rule for other languages.
macro_rules! validated_string {
    (
        $(#[$doc:meta])*
        $name:ident, field = $field:literal, rule = $rule:literal,
        schema = { $($schema:tt)* }, check = $check:expr
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The JSON/field name used in error messages.
            pub const FIELD: &'static str = $field;
            /// The rule, as stated in error messages.
            pub const RULE: &'static str = $rule;

            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidValue> {
                let value: String = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok(Self(value))
                } else {
                    Err(InvalidValue { field: $field, rule: $rule, got: truncated(&value) })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, InvalidValue> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "description": $rule, $($schema)* })
            }
        }
    };
}

/// Error messages quote at most this much of a bad value.
fn truncated(value: &str) -> String {
    const MAX: usize = 80;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

fn all(value: &str, allowed: impl Fn(char) -> bool) -> bool {
    value.chars().all(allowed)
}

/// The characters [`char::is_control`] (Unicode Cc) and [`char::is_whitespace`] (Unicode
/// White_Space) find, as a regular-expression character class body: the schemas below state
/// exactly the rules of the checks that use these two functions.
macro_rules! control {
    () => {
        "\\u0000-\\u001f\\u007f-\\u009f"
    };
}
macro_rules! space_or_control {
    () => {
        concat!(
            control!(),
            " \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
        )
    };
}

/// [`free_text`]'s rule: no control character, and neither starting nor ending with a space.
const FREE_TEXT_PATTERN: &str = concat!(
    "^[^",
    space_or_control!(),
    "]([^",
    control!(),
    "]*[^",
    space_or_control!(),
    "])?$"
);

/// [`Email`]'s rule: something without `@`, `@`, and a domain holding a dot but not starting
/// or ending with one; no spaces or control characters anywhere.
const EMAIL_PATTERN: &str = concat!(
    "^[^@",
    space_or_control!(),
    "]+@[^@.",
    space_or_control!(),
    "][^@",
    space_or_control!(),
    "]*\\.[^@",
    space_or_control!(),
    "]*[^@.",
    space_or_control!(),
    "]$"
);

fn free_text(value: &str, max_chars: usize) -> bool {
    let trimmed = value.trim();
    !trimmed.is_empty()
        && trimmed.len() == value.len()
        && value.chars().count() <= max_chars
        && !value.chars().any(char::is_control)
}

validated_string!(
    /// A tenant's short name, e.g. `customer-1`: a DNS-label-like slug.
    TenantName, field = "name",
    rule = "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
    schema = { "pattern": "^[a-z0-9][a-z0-9-]{0,62}$" },
    check = |v| {
        (1..=63).contains(&v.len())
            && !v.starts_with('-')
            && all(v, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }
);

validated_string!(
    /// A technician's MSP username, e.g. `nik`. At most 19 characters so that an ephemeral
    /// account `<username>_<12 digits>` still fits the 32-character limit of Linux accounts.
    Username, field = "username",
    rule = "must be 1-19 characters of a-z, 0-9, '.', '_' and '-', starting with a letter",
    schema = { "pattern": "^[a-z][a-z0-9._-]{0,18}$" },
    check = |v| {
        (1..=19).contains(&v.len())
            && v.starts_with(|c: char| c.is_ascii_lowercase())
            && all(v, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    }
);

validated_string!(
    /// An e-mail address, used as the technician's and admins' display name in the audit trail.
    Email, field = "email",
    rule = "must be an e-mail address like nik@example.com (at most 254 characters)",
    schema = { "pattern": EMAIL_PATTERN, "maxLength": 254 },
    check = |v| {
        let Some((local, domain)) = v.split_once('@') else { return false };
        v.chars().count() <= 254
            && !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !v.chars().any(|c| c.is_whitespace() || c.is_control())
    }
);

validated_string!(
    /// A local account name on a computer, e.g. `msp-nik`, `msp-2356`, `nik_566054625600`.
    /// The portable subset that both `useradd` and Windows accept.
    AccountName, field = "account",
    rule = "must be 1-32 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or '_'",
    schema = { "pattern": "^[a-z_][a-z0-9._-]{0,31}$" },
    check = |v| {
        (1..=32).contains(&v.len())
            && v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && all(v, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    }
);

validated_string!(
    /// A local group, e.g. `Administrators`, `sudo`, `wheel`.
    GroupName, field = "admin_group",
    rule = "must be 1-64 characters of letters, digits, ' ', '.', '_' and '-', \
            not starting with '-' or a space and not ending with a space",
    schema = {
        "pattern": "^[A-Za-z0-9_.]([A-Za-z0-9_. -]{0,62}[A-Za-z0-9_.-])?$"
    },
    check = |v| {
        (1..=64).contains(&v.len())
            && !v.starts_with(['-', ' '])
            && !v.ends_with(' ')
            && all(v, |c| c.is_ascii_alphanumeric() || " ._-".contains(c))
    }
);

validated_string!(
    /// A computer's host name, e.g. `W11-L-PASSWORD` (RFC 1123 labels, dots allowed).
    Hostname, field = "hostname",
    rule = "must be a host name: dot-separated labels of 1-63 letters, digits and '-', \
            not starting or ending with '-' (at most 253 characters)",
    schema = {
        "pattern": "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
        "maxLength": 253
    },
    check = |v| {
        (1..=253).contains(&v.len())
            && v.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && all(label, |c| c.is_ascii_alphanumeric() || c == '-')
            })
    }
);

validated_string!(
    /// Why a technician checks out a computer (free text, shown in the audit trail).
    Reason, field = "reason",
    rule = "must be 1-500 characters without control characters or surrounding spaces",
    schema = { "pattern": FREE_TEXT_PATTERN, "maxLength": 500 },
    check = |v| free_text(v, 500)
);

validated_string!(
    /// A reference to the MSP's ticket for this work, e.g. `INC-4711`.
    TicketRef, field = "ticket",
    rule = "must be 1-100 characters without control characters or surrounding spaces",
    schema = { "pattern": FREE_TEXT_PATTERN, "maxLength": 100 },
    check = |v| free_text(v, 100)
);

validated_string!(
    /// Why an agent could not carry out a provisioning request, as the agent reported it.
    FailureReason, field = "reason",
    rule = "must be 1-1000 characters without control characters or surrounding spaces",
    schema = { "pattern": FREE_TEXT_PATTERN, "maxLength": 1000 },
    check = |v| free_text(v, 1000)
);

validated_string!(
    /// The name a person gave at an offline login to a shared account: a claim, not an
    /// identity (the TOTP code only proves possession of the computer's shared secret).
    ClaimedName, field = "claimed_by",
    rule = "must be 1-100 characters without control characters or surrounding spaces",
    schema = { "pattern": FREE_TEXT_PATTERN, "maxLength": 100 },
    check = |v| free_text(v, 100)
);

validated_string!(
    /// The 4 random digits of a tenant's shared account, `msp-NNNN`. Chosen by the caller.
    SharedAccountDigits, field = "shared_account_digits",
    rule = "must be exactly 4 digits",
    schema = { "pattern": "^[0-9]{4}$" },
    check = |v| v.len() == 4 && all(v, |c| c.is_ascii_digit())
);

validated_string!(
    /// The 12 random digits of an ephemeral account, `<username>_NNNNNNNNNNNN`.
    EphemeralDigits, field = "ephemeral_digits",
    rule = "must be exactly 12 digits",
    schema = { "pattern": "^[0-9]{12}$" },
    check = |v| v.len() == 12 && all(v, |c| c.is_ascii_digit())
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_values_parse() {
        for v in ["customer-1", "acme", "0day"] {
            TenantName::parse(v).unwrap();
        }
        for v in ["nik", "j.posada", "a_b-c", "abcdefghijklmnopqrs"] {
            Username::parse(v).unwrap();
        }
        for v in ["msp-nik", "msp-2356", "nik_566054625600", "_svc"] {
            AccountName::parse(v).unwrap();
        }
        for v in ["Administrators", "sudo", "wheel", "Remote Desktop Users"] {
            GroupName::parse(v).unwrap();
        }
        for v in ["W11-L-PASSWORD", "W10-local", "host.example.com"] {
            Hostname::parse(v).unwrap();
        }
        Email::parse("nik@nikpot.com").unwrap();
        SharedAccountDigits::parse("0042").unwrap();
        EphemeralDigits::parse("566054625600").unwrap();
    }

    #[test]
    fn bad_values_are_refused_with_the_field_and_the_rule() {
        let err = Username::parse("Nik!").unwrap_err();
        assert_eq!(err.field, "username");
        assert_eq!(
            err.to_string(),
            "username must be 1-19 characters of a-z, 0-9, '.', '_' and '-', starting with a \
             letter (got 'Nik!')"
        );
        assert!(
            Username::parse("abcdefghijklmnopqrst").is_err(),
            "20 characters"
        );
        assert!(Username::parse("1nik").is_err());
        assert!(TenantName::parse("-x").is_err());
        assert!(TenantName::parse("Customer").is_err());
        assert!(AccountName::parse("msp-Nik").is_err());
        assert!(AccountName::parse("a".repeat(33)).is_err());
        assert!(GroupName::parse(" sudo").is_err());
        assert!(GroupName::parse("sudo;rm").is_err());
        assert!(Hostname::parse("bad-.host").is_err());
        assert!(Hostname::parse("a..b").is_err());
        assert!(Email::parse("nik").is_err());
        assert!(Email::parse("nik@localhost").is_err());
        assert!(Email::parse("n ik@x.com").is_err());
        assert!(Reason::parse("  padded").is_err());
        assert!(Reason::parse("line\nbreak").is_err());
        assert!(Reason::parse("x".repeat(501)).is_err());
        assert!(SharedAccountDigits::parse("123").is_err());
        assert!(EphemeralDigits::parse("12345678901a").is_err());
    }

    #[test]
    fn deserialising_goes_through_the_constructor() {
        let ok: Username = serde_json::from_str("\"nik\"").unwrap();
        assert_eq!(ok.as_str(), "nik");
        let err = serde_json::from_str::<Username>("\"NIK\"").unwrap_err();
        assert!(err.to_string().contains("username must be"), "{err}");
    }

    /// Whether `T`'s JSON Schema accepts `value`.
    fn schema_accepts<T: JsonSchema>(value: &str) -> bool {
        let schema = schemars::schema_for!(T);
        jsonschema::validator_for(&serde_json::to_value(&schema).unwrap())
            .unwrap()
            .is_valid(&serde_json::Value::from(value))
    }

    /// The schemas promise clients exactly what the constructors accept: a value the schema
    /// allows is never refused, and one it forbids never accepted.
    #[test]
    fn each_schema_states_its_constructors_rule() {
        fn agree<T: JsonSchema>(parse: fn(&str) -> bool, samples: &[&str]) {
            for sample in samples {
                assert_eq!(
                    schema_accepts::<T>(sample),
                    parse(sample),
                    "{} and its schema disagree on {sample:?}",
                    T::schema_name()
                );
            }
        }
        let free_text = [
            "printer driver",
            "x",
            "émigré ✓",
            "",
            " padded",
            "padded ",
            "\u{a0}nbsp",
            "tab\tinside",
            "line\nbreak",
            "nul\u{0}",
            "del\u{7f}",
            "nel\u{85}",
            "ok\u{feff}",
            "ends\u{3000}",
            "two  spaces",
        ];
        agree::<Reason>(|v| Reason::parse(v).is_ok(), &free_text);
        agree::<TicketRef>(|v| TicketRef::parse(v).is_ok(), &free_text);
        agree::<FailureReason>(|v| FailureReason::parse(v).is_ok(), &free_text);
        agree::<ClaimedName>(|v| ClaimedName::parse(v).is_ok(), &free_text);
        let long_reason = "é".repeat(500);
        let too_long_reason = "é".repeat(501);
        agree::<Reason>(
            |v| Reason::parse(v).is_ok(),
            &[&long_reason, &too_long_reason],
        );
        let long_local = format!("{}@b.cd", "é".repeat(249));
        let too_long_local = format!("{}@b.cd", "é".repeat(250));
        agree::<Email>(
            |v| Email::parse(v).is_ok(),
            &[
                "nik@nikpot.com",
                "Nik@Nikpot.Com",
                "a@b.c",
                "a@b..c",
                "a+tag@x.y.z",
                "nik",
                "nik@localhost",
                "@x.com",
                "a@.x.com",
                "a@x.com.",
                "a@b@c.d",
                "n ik@x.com",
                "nik@x.com ",
                "ni\u{1}k@x.com",
                "nik@x\u{2028}.com",
                "ü@ü.ü",
                &long_local,
                &too_long_local,
            ],
        );
        agree::<Username>(
            |v| Username::parse(v).is_ok(),
            &[
                "nik",
                "j.doe",
                "a_b-c",
                "Nik",
                "1nik",
                "",
                "abcdefghijklmnopqrs",
                "abcdefghijklmnopqrst",
            ],
        );
        agree::<crate::policy::AccountTemplate>(
            |v| crate::policy::AccountTemplate::parse(v).is_ok(),
            &[
                "msp-{username}",
                "{username}",
                "{username}.adm",
                "_{username}",
                "abcdefghijklm{username}",
                "abcdefghijklmn{username}",
                "{username}{username}",
                "msp",
                "msp-{user}",
                "Msp-{username}",
                "-{username}",
                "1{username}",
                "msp {username}",
                "{username}-x-{",
                "x.{username}",
            ],
        );
        agree::<GroupName>(
            |v| GroupName::parse(v).is_ok(),
            &[
                "sudo",
                "Remote Desktop Users",
                " sudo",
                "sudo ",
                "-x",
                "x-",
                "a;b",
                "",
            ],
        );
        agree::<Hostname>(
            |v| Hostname::parse(v).is_ok(),
            &["W11-L-PASSWORD", "a.b", "a..b", "-a", "a-", "", "a_b"],
        );
    }

    #[test]
    fn long_bad_values_are_truncated_in_messages() {
        let err = TicketRef::parse("x".repeat(200)).unwrap_err();
        assert!(err.got.chars().count() <= 81);
    }
}
