//! The readable forms of the answers: `key  value` fields, tables (comfy-table) and phrases;
//! and `--json`, the answer as JSON.

use crate::client::Api;
use crate::error::CliError;
use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{presets, Table};
use latchkey_domain::computer::AccountOwner;
use latchkey_domain::policy::JitPolicy;
use latchkey_wire::{ComputerView, SessionView, TechnicianView, TenantView};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::io::Write as _;

/// Writes one block of text and a newline to standard output. A closed pipe (`| head`)
/// ends the program quietly, as it does for other command-line tools.
pub fn emit(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => Err(CliError::Io {
            what: "cannot write to standard output".into(),
            error,
        }),
    }
}

/// An answer as JSON: its fields in alphabetical order, as `--json` has always printed them.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Prints `value` as JSON under `--json`, else the readable form `human` makes of it.
pub fn show<T: Serialize>(
    api: &Api,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    if api.json {
        let pretty = serde_json::to_string_pretty(&json(value)).unwrap_or_default();
        emit(&pretty)
    } else {
        let text = human(value);
        if text.trim().is_empty() {
            return Ok(());
        }
        emit(text.trim_end())
    }
}

/// A value as text, as its JSON reads: strings bare, `null` and empty lists as `-`, booleans
/// as yes or no, lists joined with commas.
pub fn text<T: Serialize + ?Sized>(value: &T) -> String {
    fn of(value: &Value) -> String {
        match value {
            Value::Null => "-".to_owned(),
            Value::String(s) => s.clone(),
            Value::Bool(true) => "yes".to_owned(),
            Value::Bool(false) => "no".to_owned(),
            Value::Array(items) if items.is_empty() => "-".to_owned(),
            Value::Array(items) => items.iter().map(of).collect::<Vec<_>>().join(", "),
            other => other.to_string(),
        }
    }
    of(&json(value))
}

/// A time, to the second.
pub fn time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A time that may be absent (`-`).
pub fn maybe_time(value: &Option<DateTime<Utc>>) -> String {
    value.as_ref().map_or_else(|| "-".to_owned(), time)
}

/// A time the read models keep as RFC 3339 text, to the second.
pub fn time_text(value: &str) -> String {
    DateTime::parse_from_rfc3339(value)
        .map(|t| time(&t.with_timezone(&Utc)))
        .unwrap_or_else(|_| value.to_owned())
}

/// Rows under a header, in columns wide enough for their widest cell, two spaces apart; no
/// borders, so a script can still cut the columns.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(header.to_vec());
    for row in rows {
        table.add_row(row);
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The rows of a list, or a note when there are none.
pub fn listing<T>(
    items: &[T],
    none: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> String {
    if items.is_empty() {
        return none.to_owned();
    }
    table(header, items.iter().map(row).collect())
}

/// `key  value` lines, aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

pub fn policy_text(policy: &JitPolicy) -> String {
    let policy = policy.fields();
    let password = &policy.password;
    let alphabet = password.alphabet();
    let alphabet = [
        ("lowercase", alphabet.lowercase),
        ("uppercase", alphabet.uppercase),
        ("digits", alphabet.digits),
        ("symbols", alphabet.symbols),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(class, _)| class)
    .collect::<Vec<_>>()
    .join(", ");
    fields(&[
        ("provisioning", text(&policy.provisioning_enabled)),
        ("admin group", text(&policy.admin_group)),
        ("on check-in", text(&policy.on_check_in)),
        (
            "reuse existing account",
            text(&policy.reuse_existing_account),
        ),
        (
            "max session",
            format!("{} minutes", policy.max_session_minutes.as_minutes()),
        ),
        (
            "password",
            format!("{} characters ({alphabet})", password.length()),
        ),
        ("rotate on check-in", text(&policy.rotate_on_check_in)),
        (
            "when access ends",
            match policy.post_session_actions {
                Some(actions) => actions.to_string(),
                None => "the login mode's default".to_owned(),
            },
        ),
        (
            "named account template",
            policy.named_account_template.as_str().to_owned(),
        ),
    ])
}

pub fn tenant_text(tenant: &TenantView) -> String {
    let mut mode = tenant.login_mode.as_str().to_owned();
    if let Some(account) = &tenant.shared_account {
        let _ = write!(mode, " (shared account {account})");
    }
    let mut out = fields(&[
        ("tenant", tenant.name.to_string()),
        ("id", tenant.tenant_id.to_string()),
        ("login mode", mode),
    ]);
    out.push_str("JIT policy:\n");
    for line in policy_text(&tenant.policy).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

pub fn technician_text(technician: &TechnicianView) -> String {
    fields(&[
        ("technician", technician.username.to_string()),
        ("id", technician.technician_id.to_string()),
        ("email", technician.email.to_string()),
        ("tenants", text(&technician.tenants)),
        ("offboarded", text(&technician.offboarded)),
    ])
}

/// An account owner in a few words: `named (<technician id>)`, `shared`.
pub fn owner(owner: &AccountOwner) -> String {
    let kind = owner.login_mode().as_str();
    match owner {
        AccountOwner::Named { technician_id } | AccountOwner::Ephemeral { technician_id } => {
            format!("{kind} ({technician_id})")
        }
        AccountOwner::Shared => kind.to_owned(),
    }
}

pub fn session_text(session: &SessionView) -> String {
    let mut status = session.status.clone();
    if let Some(reason) = &session.check_in_reason {
        let _ = write!(status, " ({})", text(reason));
    }
    if let Some(failure) = &session.failure {
        let _ = write!(status, ": {failure}");
    }
    fields(&[
        ("session", session.session_id.to_string()),
        ("status", status),
        ("account", session.account.to_string()),
        ("computer", session.computer_id.to_string()),
        ("technician", session.technician_id.to_string()),
        ("checked out", time(&session.checked_out_at)),
        ("expires", time(&session.expires_at)),
    ])
}

pub fn computer_text(c: &ComputerView) -> String {
    let policy = match c.policy_override {
        None => "the tenant's".to_owned(),
        Some(_) => "its own (override)".to_owned(),
    };
    let mut out = fields(&[
        ("computer", c.hostname.clone()),
        ("id", c.computer_id.to_string()),
        ("tenant", c.tenant_id.to_string()),
        ("os", text(&c.os)),
        ("decommissioned", text(&c.decommissioned)),
        ("policy", policy),
    ]);
    if let Some(policy) = &c.policy_override {
        for line in policy_text(policy).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push('\n');
    out.push_str(&listing(
        &c.accounts,
        "no managed accounts",
        &[
            "ACCOUNT",
            "OWNER",
            "WANTED",
            "RETIRING",
            "PASSWORD_V",
            "SESSIONS",
            "VERIFIED",
        ],
        |a| {
            let seen = match &a.verified {
                None => "not yet".to_owned(),
                Some(verified) if verified.present => format!(
                    "present; groups: {}; password v{}",
                    text(&verified.groups),
                    text(&verified.password_version)
                ),
                Some(_) => "absent".to_owned(),
            };
            vec![
                a.account.clone(),
                owner(&a.owner),
                text(&a.wanted),
                text(&a.retiring),
                a.password_version.to_string(),
                text(&a.sessions),
                seen,
            ]
        },
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up() {
        let rows = vec![vec!["a".to_owned(), "bbb".to_owned(), "c".to_owned()]];
        assert_eq!(table(&["X", "Y", "Z"], rows), "X  Y    Z\na  bbb  c\n");
        let rows = vec![
            vec!["long cell".to_owned(), "-".to_owned()],
            vec!["é".to_owned(), "yes".to_owned()],
        ];
        assert_eq!(
            table(&["A", "B"], rows),
            "A          B\nlong cell  -\né          yes\n"
        );
    }

    #[test]
    fn values_read_as_their_json() {
        assert_eq!(text(&None::<u32>), "-");
        assert_eq!(text(&true), "yes");
        assert_eq!(text(&Vec::<u32>::new()), "-");
        assert_eq!(text(&[1, 2]), "1, 2");
        assert_eq!(
            text(&latchkey_domain::policy::CheckInAction::RemoveFromGroup),
            "remove_from_group"
        );
        assert_eq!(
            time_text("2026-11-23T10:00:00.5+01:00"),
            "2026-11-23T09:00:00Z"
        );
    }
}
