//! The sentences of a computer's events, by topic: its enrolment, decommissioning and own JIT
//! policy; the provisioning requests its agent is asked to carry out and the results the
//! agent verified; a session's access being requested, given, refused and released, and
//! accounts retired; offline secrets, logins and lockouts; the agent's inventory.
//!
//! Every line is filed under the computer and its tenant, as the directory knows them. A line
//! about one of its accounts is also filed under the account, the session if the event
//! concerns one, and the technician the account belongs to (see [`Names::technician_of`]),
//! so each technician's and each account's history is complete.

use super::names::{ComputerName, Names, RequestFacts, SessionFacts};
use super::text::{agent, is_self, moment, os_name, policy_text, purpose_name};
use super::Line;
use latchkey_domain::computer::{
    AccountRetirementStarted, AdminGroupInventoried, ComputerDecommissioned, ComputerEnrolled,
    ComputerEvent, ComputerJitPolicyOverridden, OfflineLoginEnded, OfflineLoginLockedOut,
    OfflineLoginRecorded, OfflineSecretDisclosed, OfflineSecretIssued, OfflineSecretRevoked,
    PostSessionActionsTaken, ProvisioningFailed, ProvisioningRequested, ProvisioningRetried,
    ProvisioningSuperseded, Purpose, ReleaseOutcome, RetireReason, SessionAccessFailed,
    SessionAccessGranted, SessionAccessReleased, SessionAccessRequested,
};
use latchkey_domain::ids::{ComputerId, RequestId, TechnicianId};
use latchkey_domain::names::AccountName;
use latchkey_domain::policy::CheckInAction;
use latchkey_domain::Timestamp;
use latchkey_sql::Result;
use latchkey_store::RecordedEvent;

/// The line of a computer's event.
pub(super) fn line(
    names: &Names<'_>,
    recorded: &RecordedEvent,
    event: &ComputerEvent,
) -> Result<Line> {
    let (computer_id, at) = subject(event);
    let on = OnComputer::new(names, recorded, computer_id, at)?;
    match event {
        // The computer itself.
        ComputerEvent::ComputerEnrolled(e) => on.enrolled(e),
        ComputerEvent::ComputerDecommissioned(e) => on.decommissioned(e),
        ComputerEvent::ComputerJitPolicyOverridden(e) => on.policy_overridden(e),

        // What the agent is asked to do, and what it verified it did.
        ComputerEvent::ProvisioningRequested(e) => on.provisioning_requested(e),
        ComputerEvent::ProvisioningRetried(e) => on.provisioning_retried(e),
        ComputerEvent::ProvisioningSuperseded(e) => on.provisioning_superseded(e),
        ComputerEvent::ProvisioningFailed(e) => on.provisioning_failed(e),
        ComputerEvent::AccountProvisioned(e) => on.verified(
            e.request_id,
            &e.account,
            format!("account {} exists", e.account),
        ),
        ComputerEvent::PasswordRotated(e) => on.verified(
            e.request_id,
            &e.account,
            format!(
                "the password of {} was rotated to version {}",
                e.account, e.version
            ),
        ),
        ComputerEvent::AddedToAdminGroup(e) => on.verified(
            e.request_id,
            &e.account,
            format!("{} was added to {}", e.account, e.group),
        ),
        ComputerEvent::RemovedFromAdminGroup(e) => on.verified(
            e.request_id,
            &e.account,
            format!("{} was removed from {}", e.account, e.group),
        ),
        ComputerEvent::PostSessionActionsTaken(e) => {
            on.verified(e.request_id, &e.account, post_session_taken(e))
        }
        ComputerEvent::AccountDeleted(e) => on.verified(
            e.request_id,
            &e.account,
            format!("account {} was deleted", e.account),
        ),

        // A session's access, and accounts no session will use again.
        ComputerEvent::SessionAccessRequested(e) => on.access_requested(e),
        ComputerEvent::SessionAccessGranted(e) => on.access_granted(e),
        ComputerEvent::SessionAccessFailed(e) => on.access_failed(e),
        ComputerEvent::SessionAccessReleased(e) => on.access_released(e),
        ComputerEvent::AccountRetirementStarted(e) => on.retirement_started(e),

        // Logging in while the computer cannot reach Latchkey.
        ComputerEvent::OfflineSecretIssued(e) => on.offline_secret_issued(e),
        ComputerEvent::OfflineSecretRevoked(e) => on.offline_secret_revoked(e),
        ComputerEvent::OfflineSecretDisclosed(e) => on.offline_secret_disclosed(e),
        ComputerEvent::OfflineLoginRecorded(e) => on.offline_login_recorded(e),
        ComputerEvent::OfflineLoginEnded(e) => on.offline_login_ended(e),
        ComputerEvent::OfflineLoginLockedOut(e) => on.offline_login_locked_out(e),

        // What the agent found on the machine.
        ComputerEvent::AdminGroupInventoried(e) => Ok(on.inventoried(e)),
    }
}

/// What the agent verified after the post-session actions, e.g. "the logons of msp-nik were
/// ended (processes left: 0) and its cached sudo credentials cleared".
fn post_session_taken(e: &PostSessionActionsTaken) -> String {
    let mut done = Vec::new();
    if e.actions.end_logons {
        let left = e
            .verified
            .processes
            .map_or_else(|| "not counted".to_owned(), |n| n.to_string());
        done.push(format!(
            "the logons of {} were ended (processes left: {left})",
            e.account
        ));
    }
    if e.actions.clear_sudo_credentials {
        let what = if done.is_empty() {
            format!("the cached sudo credentials of {} were cleared", e.account)
        } else {
            "its cached sudo credentials cleared".to_owned()
        };
        done.push(what);
    }
    done.join(" and ")
}

/// The computer an event is about, and when it happened: every computer event names both.
fn subject(event: &ComputerEvent) -> (ComputerId, Timestamp) {
    match event {
        ComputerEvent::ComputerEnrolled(e) => (e.computer_id, e.at),
        ComputerEvent::ComputerDecommissioned(e) => (e.computer_id, e.at),
        ComputerEvent::ComputerJitPolicyOverridden(e) => (e.computer_id, e.at),
        ComputerEvent::SessionAccessRequested(e) => (e.computer_id, e.at),
        ComputerEvent::ProvisioningRequested(e) => (e.computer_id, e.at),
        ComputerEvent::ProvisioningRetried(e) => (e.computer_id, e.at),
        ComputerEvent::ProvisioningSuperseded(e) => (e.computer_id, e.at),
        ComputerEvent::ProvisioningFailed(e) => (e.computer_id, e.at),
        ComputerEvent::AccountProvisioned(e) => (e.computer_id, e.at),
        ComputerEvent::PasswordRotated(e) => (e.computer_id, e.at),
        ComputerEvent::AddedToAdminGroup(e) => (e.computer_id, e.at),
        ComputerEvent::RemovedFromAdminGroup(e) => (e.computer_id, e.at),
        ComputerEvent::AccountDeleted(e) => (e.computer_id, e.at),
        ComputerEvent::PostSessionActionsTaken(e) => (e.computer_id, e.at),
        ComputerEvent::SessionAccessGranted(e) => (e.computer_id, e.at),
        ComputerEvent::SessionAccessFailed(e) => (e.computer_id, e.at),
        ComputerEvent::SessionAccessReleased(e) => (e.computer_id, e.at),
        ComputerEvent::AccountRetirementStarted(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineSecretIssued(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineSecretRevoked(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineSecretDisclosed(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineLoginRecorded(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineLoginEnded(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineLoginLockedOut(e) => (e.computer_id, e.at),
        ComputerEvent::AdminGroupInventoried(e) => (e.computer_id, e.at),
    }
}

/// What the lines of one computer event share: the computer as the directory names it, the
/// event's time, and the two ways to name who caused it.
struct OnComputer<'a> {
    names: &'a Names<'a>,
    id: ComputerId,
    at: Timestamp,
    computer: ComputerName,
    /// `agent of <hostname>`: who is asked to act on the machine, and who reports back.
    agent: String,
    /// Who caused the event, from its metadata: most computer events do not name their actor
    /// (the process managers', the agent's).
    recorded_actor: String,
}

impl<'a> OnComputer<'a> {
    fn new(
        names: &'a Names<'a>,
        recorded: &RecordedEvent,
        id: ComputerId,
        at: Timestamp,
    ) -> Result<Self> {
        let computer = names.computer(id)?;
        let agent = agent(&computer.hostname);
        let recorded_actor = names.recorded_actor(recorded)?;
        Ok(Self {
            names,
            id,
            at,
            computer,
            agent,
            recorded_actor,
        })
    }

    fn host(&self) -> &str {
        &self.computer.hostname
    }

    fn recorded_actor(&self) -> String {
        self.recorded_actor.clone()
    }

    /// A line about the computer, filed under it and its tenant.
    fn base(&self, actor: String, sentence: String) -> Line {
        Line::new(self.at, actor, sentence)
            .computer(self.id)
            .tenant_opt(self.computer.tenant.clone())
    }

    /// A line about one account of the computer, with its session (if the event concerns one)
    /// and the technician it belongs to, if known.
    fn about_account(
        &self,
        actor: String,
        sentence: String,
        session: Option<String>,
        account: &str,
    ) -> Result<Line> {
        let technician = self
            .names
            .technician_of(self.id, session.as_deref(), account)?;
        Ok(self
            .base(actor, sentence)
            .session_opt(session)
            .technician_opt(technician)
            .account(account))
    }

    /// A provisioning request of this computer as it was made.
    fn request(&self, id: RequestId) -> Result<Option<RequestFacts>> {
        self.names.request(self.id, id)
    }

    /// The session a provisioning request was made for, if any.
    fn request_session(&self, id: RequestId) -> Result<Option<String>> {
        Ok(self.request(id)?.and_then(|r| r.session))
    }

    fn email(&self, technician: TechnicianId) -> Result<String> {
        self.names.email(&technician.to_string())
    }

    /// The session's technician, or "the technician" for a session the directory does not
    /// know.
    fn session_technician(&self, facts: Option<&SessionFacts>) -> Result<String> {
        match facts {
            Some(f) => self.names.email(&f.technician),
            None => Ok("the technician".to_owned()),
        }
    }

    /// The computer's tenant, or "its tenant" for a computer the directory does not know.
    fn tenant(&self) -> Result<String> {
        match &self.computer.tenant {
            Some(t) => self.names.tenant(t),
            None => Ok("its tenant".to_owned()),
        }
    }

    // The computer itself.

    fn enrolled(&self, e: &ComputerEnrolled) -> Result<Line> {
        let actor = self.names.actor(&e.by)?;
        let tenant = self.names.tenant(&e.tenant_id.to_string())?;
        let host = self.host();
        let sentence = format!(
            "{actor} enrolled the {} computer {host} in {tenant}",
            os_name(e.os)
        );
        Ok(self.base(actor, sentence).tenant(e.tenant_id))
    }

    fn decommissioned(&self, e: &ComputerDecommissioned) -> Result<Line> {
        let actor = self.names.actor(&e.by)?;
        let sentence = format!("{actor} decommissioned the computer {}", self.host());
        Ok(self.base(actor, sentence))
    }

    fn policy_overridden(&self, e: &ComputerJitPolicyOverridden) -> Result<Line> {
        let actor = self.names.actor(&e.by)?;
        let host = self.host();
        let sentence = match &e.policy {
            Some(policy) => format!(
                "{actor} set the JIT policy of {host} to: {}",
                policy_text(policy)
            ),
            None => {
                let tenant = self.tenant()?;
                format!(
                    "{actor} removed the JIT policy override of {host}; the JIT policy of \
                     {tenant} applies again"
                )
            }
        };
        Ok(self.base(actor, sentence))
    }

    // What the agent is asked to do, and what it verified it did.

    fn provisioning_requested(&self, e: &ProvisioningRequested) -> Result<Line> {
        let session = e.session_id.map(|s| s.to_string());
        let technician = session
            .as_deref()
            .map(|s| self.names.session(s))
            .transpose()?
            .flatten()
            .map(|s| s.technician);
        let email = technician
            .as_deref()
            .map(|t| self.names.email(t))
            .transpose()?;
        let why = match (e.purpose, email) {
            (Purpose::Grant, Some(email)) => format!("to give {email} access"),
            (Purpose::Grant, None) => "to give access".to_owned(),
            (Purpose::Revoke, Some(email)) => format!("to end the access of {email}"),
            (Purpose::Revoke, None) => "to end a session's access".to_owned(),
            (Purpose::Cleanup, _) => "to clean up".to_owned(),
        };
        let sentence = format!(
            "{} was asked to {}, {why} (request {})",
            self.agent, e.operation, e.request_id
        );
        self.about_account(
            self.recorded_actor(),
            sentence,
            session,
            e.operation.account().as_str(),
        )
    }

    fn provisioning_retried(&self, e: &ProvisioningRetried) -> Result<Line> {
        let session = self.request_session(e.request_id)?;
        let sentence = format!(
            "{} was asked again to {} (request {}, attempt {})",
            self.agent, e.operation, e.request_id, e.attempt
        );
        self.about_account(
            self.recorded_actor(),
            sentence,
            session,
            e.operation.account().as_str(),
        )
    }

    /// Said with the operation as it was asked, if the request is known: the event names only
    /// the request.
    fn provisioning_superseded(&self, e: &ProvisioningSuperseded) -> Result<Line> {
        let agent = &self.agent;
        match self.request(e.request_id)? {
            Some(r) => {
                let sentence = format!(
                    "{agent} no longer needs to {}: a later change made request {} unnecessary",
                    r.operation, e.request_id
                );
                self.about_account(self.recorded_actor(), sentence, r.session, &r.account)
            }
            None => {
                let sentence = format!(
                    "request {} to {agent} was made unnecessary by a later change",
                    e.request_id
                );
                Ok(self.base(self.recorded_actor(), sentence))
            }
        }
    }

    /// Says whether the request will be retried: all but a grant's are (a failed grant fails
    /// its session instead).
    fn provisioning_failed(&self, e: &ProvisioningFailed) -> Result<Line> {
        let made = self.request(e.request_id)?;
        let retried = made
            .as_ref()
            .is_some_and(|r| r.purpose != purpose_name(Purpose::Grant));
        let sentence = format!(
            "{} could not {} (request {}, attempt {}): {}{}",
            self.agent,
            e.operation,
            e.request_id,
            e.attempt,
            e.reason,
            if retried { "; it will be retried" } else { "" }
        );
        self.about_account(
            self.recorded_actor(),
            sentence,
            made.and_then(|r| r.session),
            e.operation.account().as_str(),
        )
    }

    /// The agent verified `what` after carrying out request `request` on `account`; the line
    /// goes with the request's session, which the result does not name.
    fn verified(&self, request: RequestId, account: &AccountName, what: String) -> Result<Line> {
        let sentence = format!("{} verified: {what}", self.agent);
        let session = self.request_session(request)?;
        self.about_account(self.recorded_actor(), sentence, session, account.as_str())
    }

    // A session's access, and accounts no session will use again.

    fn access_requested(&self, e: &SessionAccessRequested) -> Result<Line> {
        let email = self.email(e.technician_id)?;
        let check_in = match e.on_check_in {
            CheckInAction::RemoveFromGroup => "removed from it",
            CheckInAction::DeleteAccount => "deleted",
        };
        let sentence = format!(
            "admin access for {email} was requested on {}: account {} in {}, {check_in} at \
             check-in",
            self.host(),
            e.account,
            e.admin_group
        );
        Ok(self
            .base(self.recorded_actor(), sentence)
            .session(e.session_id)
            .technician(e.technician_id)
            .account(&e.account))
    }

    fn access_granted(&self, e: &SessionAccessGranted) -> Result<Line> {
        let session = e.session_id.to_string();
        let email = self.session_technician(self.names.session(&session)?.as_ref())?;
        let sentence = format!(
            "admin access for {email} is in place on {} with account {}",
            self.host(),
            e.account
        );
        self.about_account(
            self.recorded_actor(),
            sentence,
            Some(session),
            e.account.as_str(),
        )
    }

    fn access_failed(&self, e: &SessionAccessFailed) -> Result<Line> {
        let session = e.session_id.to_string();
        let facts = self.names.session(&session)?;
        let email = self.session_technician(facts.as_ref())?;
        let sentence = format!(
            "admin access for {email} could not be given on {}: {}",
            self.host(),
            e.reason
        );
        match facts {
            Some(f) => {
                self.about_account(self.recorded_actor(), sentence, Some(session), &f.account)
            }
            None => Ok(self.base(self.recorded_actor(), sentence).session(session)),
        }
    }

    /// Names the account the event names, else the session's.
    fn access_released(&self, e: &SessionAccessReleased) -> Result<Line> {
        let session = e.session_id.to_string();
        let facts = self.names.session(&session)?;
        let email = self.session_technician(facts.as_ref())?;
        let account = e
            .account
            .as_ref()
            .map(|a| a.to_string())
            .or_else(|| facts.as_ref().map(|f| f.account.clone()));
        let named = account.as_deref().unwrap_or("the account");
        let what = match e.outcome {
            ReleaseOutcome::KeptForOtherSessions => {
                format!("{named} stays in the admin group for other open sessions")
            }
            ReleaseOutcome::RemovedFromGroup => {
                format!("{named} is being removed from the admin group")
            }
            ReleaseOutcome::Deleted => format!("{named} is being deleted"),
            ReleaseOutcome::NothingGranted => "nothing had been granted yet".to_owned(),
        };
        let sentence = format!(
            "{} is releasing the admin access of {email}: {what}",
            self.host()
        );
        match account {
            Some(a) => self.about_account(self.recorded_actor(), sentence, Some(session), &a),
            None => Ok(self
                .base(self.recorded_actor(), sentence)
                .session(session)
                .technician_opt(facts.map(|f| f.technician))),
        }
    }

    /// A retirement for a technician's removal is filed under that technician, whoever
    /// the account was last seen with.
    fn retirement_started(&self, e: &AccountRetirementStarted) -> Result<Line> {
        let why = match &e.reason {
            RetireReason::LoginModeChanged { from } => format!(
                "the technician login mode of {} is no longer {from}",
                self.tenant()?
            ),
            RetireReason::TechnicianRemoved { technician_id } => format!(
                "technician {} no longer works for this customer",
                self.email(*technician_id)?
            ),
            RetireReason::ComputerDecommissioned => "the computer was decommissioned".to_owned(),
        };
        let sentence = format!(
            "{} is retiring account {} because {why}",
            self.host(),
            e.account
        );
        let line = self.about_account(self.recorded_actor(), sentence, None, e.account.as_str())?;
        Ok(match e.reason {
            RetireReason::TechnicianRemoved { technician_id } => line.technician(technician_id),
            _ => line,
        })
    }

    // Logging in while the computer cannot reach Latchkey. A named account's secret, login
    // and lockout are filed under its technician, which the event names.

    fn offline_secret_issued(&self, e: &OfflineSecretIssued) -> Result<Line> {
        let host = self.host();
        let whose = match e.technician_id {
            Some(t) => format!("account {} of {} on {host}", e.account, self.email(t)?),
            None => format!("the shared account {} on {host}", e.account),
        };
        let sentence = format!(
            "a new offline TOTP secret (generation {}) was issued for {whose}",
            e.generation
        );
        let line = self.about_account(self.recorded_actor(), sentence, None, e.account.as_str())?;
        Ok(line.technician_if_named(e.technician_id))
    }

    fn offline_secret_revoked(&self, e: &OfflineSecretRevoked) -> Result<Line> {
        let sentence = format!(
            "the offline TOTP secret (generation {}) of account {} on {} was revoked",
            e.generation,
            e.account,
            self.host()
        );
        self.about_account(self.recorded_actor(), sentence, None, e.account.as_str())
    }

    fn offline_secret_disclosed(&self, e: &OfflineSecretDisclosed) -> Result<Line> {
        let actor = self.names.actor(&e.by)?;
        let email = self.email(e.technician_id)?;
        let secret = format!(
            "the offline TOTP secret (generation {}) of account {} on {}",
            e.generation,
            e.account,
            self.host()
        );
        let sentence = if is_self(&e.by, &email) {
            format!("{email} was shown {secret}")
        } else {
            format!("{actor} disclosed {secret} to {email}")
        };
        Ok(self
            .about_account(actor, sentence, None, e.account.as_str())?
            .technician(e.technician_id))
    }

    fn offline_login_recorded(&self, e: &OfflineLoginRecorded) -> Result<Line> {
        let sentence = match (e.technician_id, &e.claimed_by) {
            (Some(t), _) => format!(
                "{} logged in offline to {} with account {} at {} using its offline TOTP code \
                 (generation {}), granted until {}; Latchkey rotates its password again",
                self.email(t)?,
                self.host(),
                e.account,
                moment(&e.used_at),
                e.generation,
                moment(&e.until),
            ),
            // The shared secret proves possession, not identity: say exactly that.
            (None, claimed) => format!(
                "someone {} logged in offline to {} with the shared account {} at {}: the code \
                 proved possession of the computer's shared offline secret (generation {}), \
                 not who they are; granted until {}; Latchkey rotates its password again",
                match claimed {
                    Some(name) => format!("giving the name '{name}'"),
                    None => "who gave no name (an agent that did not ask)".to_owned(),
                },
                self.host(),
                e.account,
                moment(&e.used_at),
                e.generation,
                moment(&e.until),
            ),
        };
        let line = self.about_account(self.recorded_actor(), sentence, None, e.account.as_str())?;
        Ok(line.technician_if_named(e.technician_id))
    }

    fn offline_login_ended(&self, e: &OfflineLoginEnded) -> Result<Line> {
        let what = if e.kept_for_session {
            "the account stays in the admin group for an open session, and its password is \
             rotated"
        } else {
            "Latchkey takes the account out of the admin group, rotates its password, ends its \
             logons and clears its cached sudo credentials"
        };
        let sentence = format!(
            "the offline login to {} with account {} (granted until {}) ends now, as {} is back \
             online: {what}",
            self.host(),
            e.account,
            moment(&e.until),
            self.host(),
        );
        self.about_account(self.recorded_actor(), sentence, None, e.account.as_str())
    }

    fn offline_login_locked_out(&self, e: &OfflineLoginLockedOut) -> Result<Line> {
        let whose = match e.technician_id {
            Some(t) => format!(" (of {})", self.email(t)?),
            None => String::new(),
        };
        let sentence = format!(
            "{} locked offline login to account {}{whose} after {} wrong TOTP codes at {}, \
             refusing every code for it until {}",
            self.agent,
            e.account,
            e.failures,
            moment(&e.locked_at),
            moment(&e.locked_until),
        );
        let line = self.about_account(self.recorded_actor(), sentence, None, e.account.as_str())?;
        Ok(line.technician_if_named(e.technician_id))
    }

    // What the agent found on the machine.

    fn inventoried(&self, e: &AdminGroupInventoried) -> Line {
        let members: Vec<&str> = e.members.iter().map(String::as_str).collect();
        let sentence = format!(
            "{} reported the members of {}: {}",
            self.agent,
            e.group,
            if members.is_empty() {
                "none".to_owned()
            } else {
                members.join(", ")
            }
        );
        self.base(self.recorded_actor(), sentence)
    }
}
