//! Wording the sentences of several aggregates share: actors, policies, operating systems,
//! operations and lists.

use latchkey_domain::computer::{OsKind, Purpose};
use latchkey_domain::policy::{CheckInAction, JitPolicy};
use latchkey_domain::{Actor, Timestamp};

/// The actor of what Latchkey itself does (process managers, expiry).
pub(super) const SYSTEM: &str = "latchkey";

/// The actor of what a computer's agent reports.
pub(super) fn agent(hostname: &str) -> String {
    format!("agent of {hostname}")
}

/// A moment as sentences say it, to the second: `2026-11-23 09:20:00 UTC`.
pub(super) fn moment(at: &Timestamp) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Whether `actor` is the technician with e-mail `email` acting for themselves.
pub(super) fn is_self(actor: &Actor, email: &str) -> bool {
    matches!(actor, Actor::User { email: e } if e.as_str() == email)
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// `a`, `a and b`, `a, b and c`.
fn listing(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// A JIT policy in full, every setting of it: the line that sets a policy is the record of
/// what it was, whatever it is now.
pub(super) fn policy_text(policy: &JitPolicy) -> String {
    let password = policy.password();
    let alphabet = password.alphabet();
    let classes: Vec<&str> = [
        (alphabet.lowercase, "lowercase"),
        (alphabet.uppercase, "uppercase"),
        (alphabet.digits, "digits"),
        (alphabet.symbols, "symbols"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let check_in = match policy.on_check_in() {
        CheckInAction::RemoveFromGroup => "remove the account from the admin group",
        CheckInAction::DeleteAccount => "delete the account",
    };
    // Only a policy that chooses them says so; otherwise each login mode's default applies.
    let post_session = policy
        .fields()
        .post_session_actions
        .map(|actions| format!(", when a session's access ends {actions}"))
        .unwrap_or_default();
    format!(
        "provisioning {}, admin group {}, at check-in {check_in}, account reuse {}, \
         sessions of at most {} minutes, {}-character passwords of {}, password rotation at \
         check-in {}, named accounts {}{post_session}",
        on_off(policy.provisioning_enabled()),
        policy
            .admin_group()
            .map_or("each computer's own".to_owned(), |g| g.to_string()),
        on_off(policy.reuse_existing_account()),
        policy.max_session().as_minutes(),
        password.length(),
        listing(&classes),
        on_off(policy.rotate_on_check_in()),
        policy.named_account_template().as_str(),
    )
}

pub(super) fn os_name(os: OsKind) -> &'static str {
    match os {
        OsKind::Windows => "Windows",
        OsKind::Linux => "Linux",
        OsKind::Macos => "macOS",
    }
}

/// A request's purpose as `audit_requests` stores it.
pub(super) fn purpose_name(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Grant => "grant",
        Purpose::Revoke => "revoke",
        Purpose::Cleanup => "cleanup",
    }
}
