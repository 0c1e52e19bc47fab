//! The sentences of a session's events: check-out, activation, a failed check-out, check-in
//! and a revealed password. Lines about a known session are filed under its tenant, computer,
//! technician and account, from the directory.

use super::names::{Names, SessionFacts};
use super::text::{is_self, moment};
use super::Line;
use latchkey_domain::ids::ComputerId;
use latchkey_domain::policy::LoginMode;
use latchkey_domain::session::{
    CheckInReason, CredentialRevealed, SessionActivated, SessionCheckedIn, SessionCheckedOut,
    SessionEvent, SessionProvisioningFailed,
};
use latchkey_domain::Timestamp;
use latchkey_store::RecordedEvent;
use uuid::Uuid;

/// The line of a session's event.
pub(super) fn line(
    names: &Names<'_>,
    recorded: &RecordedEvent,
    event: &SessionEvent,
) -> latchkey_sql::Result<Line> {
    match event {
        SessionEvent::SessionCheckedOut(e) => checked_out(names, e),
        SessionEvent::SessionActivated(e) => activated(names, recorded, e),
        SessionEvent::SessionProvisioningFailed(e) => provisioning_failed(names, recorded, e),
        SessionEvent::SessionCheckedIn(e) => checked_in(names, e),
        SessionEvent::CredentialRevealed(e) => revealed(names, e),
    }
}

/// "… checked out admin access to HOST with account A until T (reason: …; ticket: …)".
fn checked_out(names: &Names<'_>, e: &SessionCheckedOut) -> latchkey_sql::Result<Line> {
    let actor = names.actor(&e.by)?;
    let email = names.email(&e.technician_id.to_string())?;
    let host = names.computer(e.computer_id)?.hostname;
    let who = if is_self(&e.by, &email) {
        email.clone()
    } else {
        format!("{actor}, for {email},")
    };
    let mut sentence = format!(
        "{who} checked out admin access to {host} with account {} until {}",
        e.account,
        moment(&e.expires_at)
    );
    let details: Vec<String> = [
        e.reason.as_ref().map(|r| format!("reason: {r}")),
        e.ticket.as_ref().map(|t| format!("ticket: {t}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !details.is_empty() {
        sentence.push_str(&format!(" ({})", details.join("; ")));
    }
    Ok(Line::new(e.at, actor, sentence)
        .tenant(e.tenant_id)
        .computer(e.computer_id)
        .technician(e.technician_id)
        .session(e.session_id)
        .account(&e.account))
}

/// The session became active: in the seed products' words for the two kinds of login.
fn activated(
    names: &Names<'_>,
    recorded: &RecordedEvent,
    e: &SessionActivated,
) -> latchkey_sql::Result<Line> {
    let actor = names.recorded_actor(recorded)?;
    let session = e.session_id.to_string();
    Ok(match names.session(&session)? {
        Some(facts) => {
            let email = names.email(&facts.technician)?;
            let host = match Uuid::parse_str(&facts.computer) {
                Ok(c) => names.computer(ComputerId(c))?.hostname,
                Err(_) => format!("computer {}", facts.computer),
            };
            // The seed products' own wording for the two kinds of login.
            let sentence = if facts.login_mode == LoginMode::Shared.as_str() {
                format!(
                    "{email} accessed workstation {host} with account {}",
                    facts.account
                )
            } else {
                format!(
                    "{email} logged into the Desktop {host} with account {}",
                    facts.account
                )
            };
            facts_line(e.at, actor, sentence, &session, facts)
        }
        None => Line::new(e.at, actor, format!("session {session} became active")).session(session),
    })
}

/// The check-out could not get its access on the machine.
fn provisioning_failed(
    names: &Names<'_>,
    recorded: &RecordedEvent,
    e: &SessionProvisioningFailed,
) -> latchkey_sql::Result<Line> {
    let actor = names.recorded_actor(recorded)?;
    let session = e.session_id.to_string();
    let host = names.computer(e.computer_id)?.hostname;
    Ok(match names.session(&session)? {
        Some(facts) => {
            let email = names.email(&facts.technician)?;
            let sentence = format!(
                "{email} could not get admin access to {host} with account {}: {}",
                facts.account, e.reason
            );
            facts_line(e.at, actor, sentence, &session, facts)
        }
        None => {
            let sentence = format!(
                "session {session} could not get admin access to {host}: {}",
                e.reason
            );
            Line::new(e.at, actor, sentence)
                .session(session)
                .computer(e.computer_id)
        }
    })
}

/// Checked in: by the technician, by someone else, at its maximum length, or revoked.
fn checked_in(names: &Names<'_>, e: &SessionCheckedIn) -> latchkey_sql::Result<Line> {
    let actor = names.actor(&e.by)?;
    let session = e.session_id.to_string();
    let host = names.computer(e.computer_id)?.hostname;
    Ok(match names.session(&session)? {
        Some(facts) => {
            let email = names.email(&facts.technician)?;
            let on = format!("on {host} with account {}", facts.account);
            let sentence = match e.reason {
                CheckInReason::Manual if is_self(&e.by, &email) => {
                    format!("{email} checked in their session {on}")
                }
                CheckInReason::Manual => {
                    format!("{actor} checked in the session of {email} {on}")
                }
                CheckInReason::Expired => format!(
                    "the session of {email} {on} reached its maximum length and was \
                     checked in"
                ),
                CheckInReason::Revoked => {
                    format!("{actor} revoked the session of {email} {on}")
                }
            };
            facts_line(e.at, actor, sentence, &session, facts)
        }
        None => {
            let sentence = format!("{actor} checked in session {session} on {host}");
            Line::new(e.at, actor, sentence)
                .session(session)
                .computer(e.computer_id)
        }
    })
}

/// A password shown, and to whom.
fn revealed(names: &Names<'_>, e: &CredentialRevealed) -> latchkey_sql::Result<Line> {
    let actor = names.actor(&e.by)?;
    let email = names.email(&e.technician_id.to_string())?;
    let host = names.computer(e.computer_id)?.hostname;
    let sentence = if is_self(&e.by, &email) {
        format!("{email} was shown the password of {} on {host}", e.account)
    } else {
        format!(
            "{actor} was shown the password of {} on {host}, in the session of {email}",
            e.account
        )
    };
    let session = e.session_id.to_string();
    let tenant = names.session(&session)?.map(|f| f.tenant);
    Ok(Line::new(e.at, actor, sentence)
        .tenant_opt(tenant)
        .computer(e.computer_id)
        .technician(e.technician_id)
        .session(session)
        .account(&e.account))
}

/// A line about a session, with what the directory knows of it.
fn facts_line(
    at: Timestamp,
    actor: String,
    sentence: String,
    session: &str,
    facts: SessionFacts,
) -> Line {
    let mut line = Line::new(at, actor, sentence)
        .tenant(facts.tenant)
        .technician(facts.technician)
        .session(session)
        .account(facts.account);
    line.computer = Some(facts.computer);
    line
}
