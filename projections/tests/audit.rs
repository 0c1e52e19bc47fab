//! The audit trail: the seed products' sentences word for word, a line for every event (the
//! agent's included), each filter, cursor paging, and a trail that a second delivery or a
//! rebuild from the log leaves unchanged.

mod backend;
mod support;

use latchkey_domain::computer::{
    AccessGrant, AccountObservation, Computer, ComputerCommand, ComputerEvent, Operation,
    RequestStatus,
};
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{
    ClaimedName, Email, FailureReason, GroupName, Reason, TicketRef, Username,
};
use latchkey_domain::policy::{CheckInAction, JitPolicy, LoginMode};
use latchkey_domain::session::{
    CheckInReason, CredentialRevealed, SessionActivated, SessionCheckedIn, SessionCheckedOut,
};
use latchkey_domain::technician::{TechnicianOffboarded, TechnicianRegistered};
use latchkey_domain::tenant::{LoginModeChanged, SharedAccountAssigned};
use latchkey_domain::{Actor, Aggregate, AnyEvent};
use latchkey_projections::{AuditEntry, AuditFilter, ProjectionError, ReadModels};
use latchkey_store::MemoryStore;
use std::collections::{BTreeSet, HashMap};
use support::{
    account, admin, all_events, append, at, checked_out, enroll, nik_on_w11, register_technician,
    register_tenant, user, ADMIN, ANA, CUSTOMER_1, CUSTOMER_2, NIK, W10, W11,
};
use uuid::Uuid;

const NIK_ON_W11: SessionId = SessionId(Uuid::from_u128(1000));
const NIK_ON_W10: SessionId = SessionId(Uuid::from_u128(1001));
const ANA_ON_W11: SessionId = SessionId(Uuid::from_u128(1002));

const NIK_EMAIL: &str = "nik@nikpot.com";
const ANA_EMAIL: &str = "ana@msp.example";

const NAMED_SENTENCE: &str =
    "nik@nikpot.com logged into the Desktop W11-L-PASSWORD with account msp-nik";
const SHARED_SENTENCE: &str = "nik@nikpot.com accessed workstation W10-local with account msp-1234";
const LOGIN_MODE_SENTENCE: &str =
    "admin@msp.example changed the technician login mode of customer-1 from named to shared";

/// What a faithful agent reads back after carrying out `operation`.
fn observed(operation: &Operation) -> AccountObservation {
    let present = |groups: BTreeSet<GroupName>, password_version| AccountObservation {
        present: true,
        groups,
        password_version,
        ..AccountObservation::default()
    };
    match operation {
        Operation::EnsureAccount { .. } => present(BTreeSet::new(), None),
        Operation::RotatePassword { version, .. } => present(BTreeSet::new(), Some(*version)),
        Operation::AddToGroup { group, .. } => present(BTreeSet::from([group.clone()]), Some(1)),
        Operation::RemoveFromGroup { .. } => present(BTreeSet::new(), Some(2)),
        Operation::DeleteAccount { .. } => AccountObservation::default(),
        Operation::PostSession { .. } => AccountObservation {
            processes: Some(0),
            sudo_cached: Some(false),
            ..present(BTreeSet::new(), Some(2))
        },
    }
}

/// An event log under construction: events are appended to a `MemoryStore` with the actor
/// metadata the server would write; computer events come from the real aggregate.
struct Log {
    store: MemoryStore,
    computers: HashMap<ComputerId, Computer>,
}

impl Log {
    fn new() -> Self {
        Self {
            store: MemoryStore::new(),
            computers: HashMap::new(),
        }
    }

    async fn tenant(&self, id: TenantId, event: impl Into<latchkey_domain::tenant::TenantEvent>) {
        let event = AnyEvent::Tenant(event.into());
        append(&self.store, id.stream_name(), &admin(), vec![event]).await;
    }

    async fn technician(
        &self,
        id: TechnicianId,
        event: impl Into<latchkey_domain::technician::TechnicianEvent>,
    ) {
        let event = AnyEvent::Technician(event.into());
        append(&self.store, id.stream_name(), &admin(), vec![event]).await;
    }

    async fn session(
        &self,
        id: SessionId,
        by: &Actor,
        event: impl Into<latchkey_domain::session::SessionEvent>,
    ) {
        let event = AnyEvent::Session(event.into());
        append(&self.store, id.stream_name(), by, vec![event]).await;
    }

    /// Decides `command` on the computer's current state and appends the events.
    async fn computer(
        &mut self,
        id: ComputerId,
        by: &Actor,
        command: ComputerCommand,
    ) -> Vec<ComputerEvent> {
        let state = self.computers.entry(id).or_default();
        let events = Computer::decide(state, command).unwrap();
        for event in &events {
            *state = Computer::evolve(std::mem::take(state), event);
        }
        for event in &events {
            let event = AnyEvent::Computer(event.clone());
            append(&self.store, id.stream_name(), by, vec![event]).await;
        }
        events
    }

    /// The agent carries out every pending request and reports what it verified, until none
    /// is left.
    async fn agent_works(&mut self, id: ComputerId, minute: i64) {
        let agent = Actor::Agent { computer_id: id };
        loop {
            let pending = self.computers[&id]
                .open_requests
                .values()
                .find(|r| matches!(r.status, RequestStatus::Pending { .. }))
                .map(|r| (r.request_id, observed(&r.operation)));
            let Some((request_id, verified)) = pending else {
                return;
            };
            let command = ComputerCommand::ReportSucceeded {
                request_id,
                verified,
                at: at(minute),
            };
            self.computer(id, &agent, command).await;
        }
    }

    async fn enroll(&mut self, id: ComputerId, tenant: TenantId, hostname: &str, minute: i64) {
        self.computer(id, &admin(), enroll(id, tenant, hostname, minute))
            .await;
    }

    /// A technician checks out a computer, the agent provisions the account and the session
    /// becomes active: the server's whole check-out flow.
    #[allow(clippy::too_many_arguments)]
    async fn check_out(
        &mut self,
        session: SessionId,
        (tenant, technician, email): (TenantId, TechnicianId, &str),
        computer: ComputerId,
        mode: LoginMode,
        name: &str,
        why: Option<(&str, &str)>,
        minute: i64,
    ) {
        let checked_out = SessionCheckedOut {
            reason: why.map(|(r, _)| Reason::parse(r).unwrap()),
            ticket: why.map(|(_, t)| TicketRef::parse(t).unwrap()),
            ..checked_out(
                session,
                (tenant, technician, computer),
                mode,
                name,
                user(email),
                at(minute),
            )
        };
        let grant: AccessGrant = checked_out.access_grant();
        self.session(session, &user(email), checked_out).await;
        let command = ComputerCommand::GrantAccess {
            grant,
            at: at(minute),
        };
        self.computer(computer, &Actor::System, command).await;
        self.agent_works(computer, minute + 1).await;
        let activated = SessionActivated {
            session_id: session,
            at: at(minute + 1),
        };
        self.session(session, &Actor::System, activated).await;
    }

    async fn check_in(
        &mut self,
        session: SessionId,
        computer: ComputerId,
        reason: CheckInReason,
        by: Actor,
        minute: i64,
    ) {
        let checked_in = SessionCheckedIn {
            session_id: session,
            computer_id: computer,
            reason,
            by: by.clone(),
            at: at(minute),
        };
        self.session(session, &by, checked_in).await;
        let command = ComputerCommand::ReleaseAccess {
            session_id: session,
            at: at(minute),
        };
        self.computer(computer, &Actor::System, command).await;
        self.agent_works(computer, minute).await;
    }
}

/// Two customers: customer-1 in named mode (W11-L-PASSWORD), customer-2 in shared mode
/// (W10-local). nik works for both, ana for customer-1. Minutes 0 to 99 of one morning.
async fn world() -> Log {
    let mut log = Log::new();
    register_tenant(&log.store, CUSTOMER_1, "customer-1", LoginMode::Named, 0).await;
    register_tenant(&log.store, CUSTOMER_2, "customer-2", LoginMode::Shared, 1).await;
    let assigned = SharedAccountAssigned {
        tenant_id: CUSTOMER_2,
        account: account("msp-1234"),
        at: at(1),
    };
    log.tenant(CUSTOMER_2, assigned).await;
    register_technician(
        &log.store,
        NIK,
        "nik",
        NIK_EMAIL,
        &[CUSTOMER_1, CUSTOMER_2],
        2,
    )
    .await;
    register_technician(&log.store, ANA, "ana", ANA_EMAIL, &[CUSTOMER_1], 3).await;
    log.enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 4).await;
    log.enroll(W10, CUSTOMER_2, "W10-local", 5).await;

    log.check_out(
        NIK_ON_W11,
        (CUSTOMER_1, NIK, NIK_EMAIL),
        W11,
        LoginMode::Named,
        "msp-nik",
        Some(("printer driver", "INC-4711")),
        10,
    )
    .await;
    let revealed = CredentialRevealed {
        session_id: NIK_ON_W11,
        technician_id: NIK,
        computer_id: W11,
        account: account("msp-nik"),
        password_version: 1,
        by: user(NIK_EMAIL),
        at: at(15),
    };
    log.session(NIK_ON_W11, &user(NIK_EMAIL), revealed).await;
    log.check_in(NIK_ON_W11, W11, CheckInReason::Manual, user(NIK_EMAIL), 20)
        .await;

    log.check_out(
        NIK_ON_W10,
        (CUSTOMER_2, NIK, NIK_EMAIL),
        W10,
        LoginMode::Shared,
        "msp-1234",
        None,
        30,
    )
    .await;
    log.check_in(NIK_ON_W10, W10, CheckInReason::Expired, Actor::System, 90)
        .await;

    log.check_out(
        ANA_ON_W11,
        (CUSTOMER_1, ANA, ANA_EMAIL),
        W11,
        LoginMode::Named,
        "msp-ana",
        None,
        40,
    )
    .await;

    let changed = LoginModeChanged {
        tenant_id: CUSTOMER_1,
        from: LoginMode::Named,
        to: LoginMode::Shared,
        by: admin(),
        at: at(50),
    };
    log.tenant(CUSTOMER_1, changed).await;

    let offboarded = TechnicianOffboarded {
        technician_id: NIK,
        tenants: vec![CUSTOMER_1, CUSTOMER_2],
        by: admin(),
        at: at(99),
    };
    log.technician(NIK, offboarded).await;
    log
}

async fn built(log: &Log) -> ReadModels {
    let mut models = backend::fresh().await;
    models.apply(&all_events(&log.store).await).unwrap();
    models
}

/// Every line matching `filter`, on one page.
fn lines(models: &ReadModels, filter: AuditFilter) -> Vec<AuditEntry> {
    let page = models
        .queries()
        .audit_trail(&AuditFilter {
            limit: AuditFilter::MAX_LIMIT,
            ..filter
        })
        .unwrap();
    assert_eq!(page.next_cursor, None, "the test world fits on one page");
    page.entries
}

fn everything(models: &ReadModels) -> Vec<AuditEntry> {
    lines(models, AuditFilter::default())
}

fn sentences(entries: &[AuditEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.sentence.as_str()).collect()
}

fn line_of<'a>(entries: &'a [AuditEntry], event_type: &str, session: SessionId) -> &'a AuditEntry {
    entries
        .iter()
        .find(|e| e.event_type == event_type && e.session_id == Some(session))
        .unwrap_or_else(|| panic!("no {event_type} line for session {session}"))
}

#[tokio::test]
async fn a_named_session_reads_logged_into_the_desktop() {
    let models = built(&world().await).await;
    let all = everything(&models);
    let line = line_of(&all, "SessionActivated", NIK_ON_W11);
    assert_eq!(line.sentence, NAMED_SENTENCE);
    assert_eq!(line.tenant_id, Some(CUSTOMER_1));
    assert_eq!(line.computer_id, Some(W11));
    assert_eq!(line.technician_id, Some(NIK));
    assert_eq!(line.account.as_deref(), Some("msp-nik"));
    assert_eq!(line.at, at(11));
    assert_eq!(
        line.actor, "latchkey",
        "the process manager activates sessions"
    );
}

#[tokio::test]
async fn a_shared_session_reads_accessed_workstation() {
    let models = built(&world().await).await;
    let all = everything(&models);
    let line = line_of(&all, "SessionActivated", NIK_ON_W10);
    assert_eq!(line.sentence, SHARED_SENTENCE);
    assert_eq!(line.tenant_id, Some(CUSTOMER_2));
    assert_eq!(line.computer_id, Some(W10));
    assert_eq!(line.account.as_deref(), Some("msp-1234"));
}

#[tokio::test]
async fn an_ephemeral_session_uses_the_named_wording() {
    let mut log = Log::new();
    register_tenant(
        &log.store,
        CUSTOMER_1,
        "customer-1",
        LoginMode::Ephemeral,
        0,
    )
    .await;
    register_technician(&log.store, NIK, "nik", NIK_EMAIL, &[CUSTOMER_1], 1).await;
    log.enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 2).await;
    log.check_out(
        NIK_ON_W11,
        (CUSTOMER_1, NIK, NIK_EMAIL),
        W11,
        LoginMode::Ephemeral,
        "nik_566054625600",
        None,
        3,
    )
    .await;
    let models = built(&log).await;
    let all = everything(&models);
    assert_eq!(
        line_of(&all, "SessionActivated", NIK_ON_W11).sentence,
        "nik@nikpot.com logged into the Desktop W11-L-PASSWORD with account nik_566054625600"
    );
}

#[tokio::test]
async fn changing_the_login_mode_reads_as_the_design_says() {
    let models = built(&world().await).await;
    let changed: Vec<_> = everything(&models)
        .into_iter()
        .filter(|e| e.event_type == "LoginModeChanged")
        .collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].sentence, LOGIN_MODE_SENTENCE);
    assert_eq!(changed[0].actor, ADMIN);
    assert_eq!(changed[0].tenant_id, Some(CUSTOMER_1));
}

#[tokio::test]
async fn every_event_gets_a_line_and_the_agents_results_name_the_agent() {
    let log = world().await;
    let events = all_events(&log.store).await;
    let models = built(&log).await;
    let all = everything(&models);

    // One line per event, plus one more for nik's second tenant at offboarding.
    assert_eq!(all.len(), events.len() + 1);
    for event in &events {
        assert!(
            all.iter().any(|e| e.event_id == event.id),
            "no line for {}",
            event.event_type
        );
    }
    for entry in &all {
        assert!(!entry.sentence.is_empty() && !entry.actor.is_empty());
        // Names, not ids: the directory resolves every id the world knows.
        assert!(
            !entry.sentence.contains("0000-0000"),
            "an id in {:?}",
            entry.sentence
        );
    }

    let said = sentences(&all);
    for expected in [
        "admin@msp.example registered technician nik@nikpot.com (username nik)",
        "admin@msp.example added technician nik@nikpot.com to customer-2",
        "admin@msp.example enrolled the Windows computer W11-L-PASSWORD in customer-1",
        "customer-2 was given the shared technician account msp-1234",
        "nik@nikpot.com checked out admin access to W11-L-PASSWORD with account msp-nik \
         until 2026-11-23 10:10:00 UTC (reason: printer driver; ticket: INC-4711)",
        "admin access for nik@nikpot.com was requested on W11-L-PASSWORD: account msp-nik in \
         Administrators, removed from it at check-in",
        "agent of W11-L-PASSWORD was asked to make sure account msp-nik exists, to give \
         nik@nikpot.com access (request 1)",
        "agent of W11-L-PASSWORD was asked to rotate the password of msp-nik to version 1, to \
         give nik@nikpot.com access (request 2)",
        "agent of W11-L-PASSWORD verified: account msp-nik exists",
        "agent of W11-L-PASSWORD verified: the password of msp-nik was rotated to version 1",
        "agent of W11-L-PASSWORD verified: msp-nik was added to Administrators",
        "admin access for nik@nikpot.com is in place on W11-L-PASSWORD with account msp-nik",
        "a new offline TOTP secret (generation 1) was issued for account msp-nik of \
         nik@nikpot.com on W11-L-PASSWORD",
        NAMED_SENTENCE,
        "nik@nikpot.com was shown the password of msp-nik on W11-L-PASSWORD",
        "nik@nikpot.com checked in their session on W11-L-PASSWORD with account msp-nik",
        "W11-L-PASSWORD is releasing the admin access of nik@nikpot.com: msp-nik is being \
         removed from the admin group",
        "agent of W11-L-PASSWORD verified: msp-nik was removed from Administrators",
        SHARED_SENTENCE,
        "the session of nik@nikpot.com on W10-local with account msp-1234 reached its maximum \
         length and was checked in",
        LOGIN_MODE_SENTENCE,
        "admin@msp.example offboarded technician nik@nikpot.com, removing them from customer-1",
        "admin@msp.example offboarded technician nik@nikpot.com, removing them from customer-2",
    ] {
        assert!(
            said.contains(&expected),
            "missing {expected:?} in {said:#?}"
        );
    }

    // Agent results are the agent's, and belong to the session's technician and tenant.
    let added = all
        .iter()
        .find(|e| e.event_type == "AddedToAdminGroup" && e.session_id == Some(NIK_ON_W11))
        .unwrap();
    assert_eq!(added.actor, "agent of W11-L-PASSWORD");
    assert_eq!(added.technician_id, Some(NIK));
    assert_eq!(added.tenant_id, Some(CUSTOMER_1));
    assert_eq!(added.account.as_deref(), Some("msp-nik"));
    let requested = all
        .iter()
        .find(|e| e.event_type == "ProvisioningRequested")
        .unwrap();
    assert_eq!(requested.actor, "latchkey");
}

#[tokio::test]
async fn an_agents_failure_and_its_retry_are_explained() {
    let mut log = Log::new();
    register_tenant(&log.store, CUSTOMER_1, "customer-1", LoginMode::Named, 0).await;
    register_technician(&log.store, NIK, "nik", NIK_EMAIL, &[CUSTOMER_1], 1).await;
    log.enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 2).await;
    log.check_out(
        NIK_ON_W11,
        (CUSTOMER_1, NIK, NIK_EMAIL),
        W11,
        LoginMode::Named,
        "msp-nik",
        None,
        3,
    )
    .await;
    let checked_in = SessionCheckedIn {
        session_id: NIK_ON_W11,
        computer_id: W11,
        reason: CheckInReason::Revoked,
        by: admin(),
        at: at(10),
    };
    log.session(NIK_ON_W11, &admin(), checked_in).await;
    let release = ComputerCommand::ReleaseAccess {
        session_id: NIK_ON_W11,
        at: at(10),
    };
    let released = log.computer(W11, &Actor::System, release).await;
    let first = released
        .iter()
        .find_map(|e| match e {
            ComputerEvent::ProvisioningRequested(r) => Some(r.request_id),
            _ => None,
        })
        .unwrap();
    let failed = ComputerCommand::ReportFailed {
        request_id: first,
        reason: FailureReason::parse("msp-nik is logged in").unwrap(),
        at: at(11),
    };
    log.computer(W11, &Actor::Agent { computer_id: W11 }, failed)
        .await;
    let retry = ComputerCommand::RetryRequest {
        request_id: first,
        at: at(12),
    };
    log.computer(W11, &Actor::System, retry).await;

    let models = built(&log).await;
    let all = everything(&models);
    let said = sentences(&all);
    for expected in [
        "admin@msp.example revoked the session of nik@nikpot.com on W11-L-PASSWORD with \
         account msp-nik",
        "agent of W11-L-PASSWORD could not remove msp-nik from Administrators (request 4, \
         attempt 1): msp-nik is logged in; it will be retried",
        "agent of W11-L-PASSWORD was asked again to remove msp-nik from Administrators \
         (request 4, attempt 2)",
    ] {
        assert!(
            said.contains(&expected),
            "missing {expected:?} in {said:#?}"
        );
    }
    let failure = all
        .iter()
        .find(|e| e.event_type == "ProvisioningFailed")
        .unwrap();
    assert_eq!(failure.actor, "agent of W11-L-PASSWORD");
    assert_eq!(failure.session_id, Some(NIK_ON_W11));
    assert_eq!(failure.technician_id, Some(NIK));
}

#[tokio::test]
async fn the_tenant_filter_shows_only_that_tenants_lines() {
    let models = built(&world().await).await;
    let all = everything(&models);
    let customer_2 = lines(
        &models,
        AuditFilter {
            tenant: Some(CUSTOMER_2),
            ..AuditFilter::default()
        },
    );
    assert!(customer_2.iter().all(|e| e.tenant_id == Some(CUSTOMER_2)));
    let expected: Vec<_> = all
        .iter()
        .filter(|e| e.tenant_id == Some(CUSTOMER_2))
        .cloned()
        .collect();
    assert_eq!(customer_2, expected);
    let said = sentences(&customer_2);
    assert!(said.contains(&SHARED_SENTENCE));
    assert!(!said.contains(&NAMED_SENTENCE), "customer-1's session");
    assert!(!said.contains(&LOGIN_MODE_SENTENCE), "customer-1's change");
    assert!(
        !said.iter().any(|s| s.contains("registered technician")),
        "a technician's registration belongs to no tenant"
    );
    assert!(said.contains(
        &"admin@msp.example offboarded technician nik@nikpot.com, removing them from customer-2"
    ));
    assert!(all.iter().any(|e| e.tenant_id.is_none()));
}

#[tokio::test]
async fn the_computer_filter_shows_only_that_computers_lines() {
    let models = built(&world().await).await;
    let w10 = lines(
        &models,
        AuditFilter {
            computer: Some(W10),
            ..AuditFilter::default()
        },
    );
    assert!(w10.len() > 5);
    assert!(w10.iter().all(|e| e.computer_id == Some(W10)));
    assert_eq!(
        w10.len(),
        everything(&models)
            .iter()
            .filter(|e| e.computer_id == Some(W10))
            .count()
    );
    assert!(sentences(&w10).contains(&SHARED_SENTENCE));
    assert!(!sentences(&w10).contains(&NAMED_SENTENCE));
}

#[tokio::test]
async fn the_technician_filter_shows_only_that_technicians_lines() {
    let models = built(&world().await).await;
    let ana = lines(
        &models,
        AuditFilter {
            technician: Some(ANA),
            ..AuditFilter::default()
        },
    );
    assert!(ana.iter().all(|e| e.technician_id == Some(ANA)));
    let said = sentences(&ana);
    assert!(
        said.contains(&"admin@msp.example registered technician ana@msp.example (username ana)")
    );
    assert!(said
        .contains(&"ana@msp.example logged into the Desktop W11-L-PASSWORD with account msp-ana"));
    assert!(
        said.contains(&"agent of W11-L-PASSWORD verified: msp-ana was added to Administrators"),
        "the agent's work for ana's session is ana's"
    );
    assert!(!said.iter().any(|s| s.contains("nik@nikpot.com")));
}

#[tokio::test]
async fn the_account_filter_shows_only_that_accounts_lines() {
    let models = built(&world().await).await;
    let shared = lines(
        &models,
        AuditFilter {
            account: Some("msp-1234".into()),
            ..AuditFilter::default()
        },
    );
    assert!(shared
        .iter()
        .all(|e| e.account.as_deref() == Some("msp-1234")));
    let said = sentences(&shared);
    assert!(said.contains(&"customer-2 was given the shared technician account msp-1234"));
    assert!(said.contains(&SHARED_SENTENCE));
    assert!(said.contains(&"agent of W10-local verified: msp-1234 was added to Administrators"));
    let nobody = lines(
        &models,
        AuditFilter {
            account: Some("msp-nobody".into()),
            ..AuditFilter::default()
        },
    );
    assert!(nobody.is_empty());
}

#[tokio::test]
async fn the_time_filter_includes_from_and_excludes_to() {
    let models = built(&world().await).await;
    let all = everything(&models);
    let window = lines(
        &models,
        AuditFilter {
            from: Some(at(11)),
            to: Some(at(20)),
            ..AuditFilter::default()
        },
    );
    assert!(window.iter().all(|e| e.at >= at(11) && e.at < at(20)));
    let expected: Vec<_> = all
        .iter()
        .filter(|e| e.at >= at(11) && e.at < at(20))
        .cloned()
        .collect();
    assert_eq!(window, expected);
    let said = sentences(&window);
    assert!(
        said.contains(&NAMED_SENTENCE),
        "at minute 11: from is inclusive"
    );
    assert!(said.contains(&"nik@nikpot.com was shown the password of msp-nik on W11-L-PASSWORD"));
    assert!(
        !said.iter().any(|s| s.contains("checked in their session")),
        "at minute 20: to is exclusive"
    );
    assert!(!said.iter().any(|s| s.contains("checked out")), "minute 10");

    let reversed = models.queries().audit_trail(&AuditFilter {
        from: Some(at(20)),
        to: Some(at(11)),
        ..AuditFilter::default()
    });
    assert!(matches!(
        reversed,
        Err(ProjectionError::BadInput { field: "to", .. })
    ));
}

#[tokio::test]
async fn filters_combine() {
    let models = built(&world().await).await;
    let nik_on_w11_before_noon = lines(
        &models,
        AuditFilter {
            tenant: Some(CUSTOMER_1),
            computer: Some(W11),
            technician: Some(NIK),
            account: Some("msp-nik".into()),
            from: Some(at(0)),
            to: Some(at(180)),
            ..AuditFilter::default()
        },
    );
    assert!(!nik_on_w11_before_noon.is_empty());
    assert!(nik_on_w11_before_noon.iter().all(|e| {
        e.tenant_id == Some(CUSTOMER_1)
            && e.computer_id == Some(W11)
            && e.technician_id == Some(NIK)
            && e.account.as_deref() == Some("msp-nik")
    }));
    assert!(sentences(&nik_on_w11_before_noon).contains(&NAMED_SENTENCE));
}

#[tokio::test]
async fn pages_follow_the_cursor_without_repeating_or_skipping() {
    let models = built(&world().await).await;
    for filter in [
        AuditFilter::default(),
        AuditFilter {
            tenant: Some(CUSTOMER_1),
            ..AuditFilter::default()
        },
    ] {
        let all = lines(&models, filter.clone());
        assert!(all.len() > 10);
        for limit in [1, 2, 3, 7] {
            let mut collected: Vec<AuditEntry> = Vec::new();
            let mut cursor = None;
            let mut pages = 0;
            loop {
                let page = models
                    .queries()
                    .audit_trail(&AuditFilter {
                        cursor: cursor.clone(),
                        limit,
                        ..filter.clone()
                    })
                    .unwrap();
                pages += 1;
                assert!(page.entries.len() <= limit as usize);
                collected.extend(page.entries);
                match page.next_cursor {
                    Some(next) => {
                        assert_eq!(page_len(&collected, pages, limit), limit as usize);
                        cursor = Some(next);
                    }
                    None => break,
                }
            }
            assert_eq!(collected, all, "limit {limit}");
            assert_eq!(pages, all.len().div_ceil(limit as usize).max(1));
        }
    }
    // Global order: positions never go backwards.
    let all = everything(&models);
    assert!(all.windows(2).all(|w| w[0].position <= w[1].position));
}

/// Full pages have exactly `limit` entries (only the last one may be shorter).
fn page_len(collected: &[AuditEntry], pages: usize, limit: u32) -> usize {
    collected.len() - (pages - 1) * limit as usize
}

#[tokio::test]
async fn the_last_page_has_no_next_cursor_and_the_limit_is_clamped() {
    let models = built(&world().await).await;
    let total = everything(&models).len();
    let exact = models
        .queries()
        .audit_trail(&AuditFilter {
            limit: total as u32,
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(exact.entries.len(), total);
    assert_eq!(exact.next_cursor, None, "no empty page after a full one");

    let zero = models
        .queries()
        .audit_trail(&AuditFilter {
            limit: 0,
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(zero.entries.len(), 1, "a limit of 0 is raised to 1");
    assert!(zero.next_cursor.is_some());

    let huge = models
        .queries()
        .audit_trail(&AuditFilter {
            limit: u32::MAX,
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(huge.entries.len(), total);
}

#[tokio::test]
async fn a_malformed_cursor_is_rejected_naming_the_cursor() {
    let models = built(&world().await).await;
    for bad in [
        "",
        "abc",
        "12",
        "1.2",
        "1.2.3.4",
        "1..2",
        "+1.2.3",
        "-1.2.3",
        "1.2.x",
        " 1.2.3",
        "99999999999999999999.1.0",
        "9223372036854775808.1.0",
        "1.1.4294967296",
    ] {
        let result = models.queries().audit_trail(&AuditFilter {
            cursor: Some(bad.into()),
            ..AuditFilter::default()
        });
        match result {
            Err(ProjectionError::BadInput { field, reason }) => {
                assert_eq!(field, "cursor", "for {bad:?}");
                assert!(!reason.is_empty());
            }
            other => panic!("cursor {bad:?} was accepted: {other:?}"),
        }
    }
    // A well-formed cursor past the end is simply an empty last page.
    let past = models
        .queries()
        .audit_trail(&AuditFilter {
            cursor: Some("9223372036854775807.0.0".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert!(past.entries.is_empty() && past.next_cursor.is_none());
}

#[tokio::test]
async fn applying_the_same_events_twice_changes_nothing() {
    let log = world().await;
    let events = all_events(&log.store).await;
    let mut models = backend::fresh().await;
    models.apply(&events).unwrap();
    let before = models.dump().unwrap();
    let trail = everything(&models);
    assert!(before.contains("== audit_trail"));
    assert!(before.contains(NAMED_SENTENCE));

    assert_eq!(models.apply(&events).unwrap(), 0);
    assert_eq!(models.dump().unwrap(), before);
    assert_eq!(everything(&models), trail);

    // One event at a time (as the live server applies them) and a rebuild after clearing
    // give the same trail as one batch.
    let mut one_by_one = backend::fresh().await;
    for event in &events {
        one_by_one.apply(std::slice::from_ref(event)).unwrap();
    }
    assert_eq!(one_by_one.dump().unwrap(), before);
    models.clear().unwrap();
    assert!(everything(&models).is_empty());
    models.apply(&events).unwrap();
    assert_eq!(models.dump().unwrap(), before);
}

#[tokio::test]
async fn entries_serialise_with_their_position_and_ids() {
    let models = built(&world().await).await;
    let all = everything(&models);
    let line = line_of(&all, "SessionActivated", NIK_ON_W11);
    let json = serde_json::to_value(line).unwrap();
    assert_eq!(json["sentence"], NAMED_SENTENCE);
    assert_eq!(json["position"]["commit"], line.position.commit);
    assert_eq!(json["position"]["prepare"], line.position.prepare);
    assert_eq!(json["tenant_id"], CUSTOMER_1.to_string());
    assert_eq!(json["session_id"], NIK_ON_W11.to_string());
    assert_eq!(json["actor"], "latchkey");
}

#[tokio::test]
async fn admin_changes_failures_and_clean_ups_read_clearly() {
    let mut log = Log::new();
    register_tenant(&log.store, CUSTOMER_1, "customer-1", LoginMode::Named, 0).await;
    register_technician(&log.store, NIK, "nik", NIK_EMAIL, &[CUSTOMER_1], 1).await;
    register_technician(&log.store, ANA, "ana", ANA_EMAIL, &[CUSTOMER_1], 1).await;
    log.enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 2).await;
    let mut strict = JitPolicy::default().fields().clone();
    strict.max_session_minutes = latchkey_domain::policy::SessionLength::minutes(30).unwrap();
    strict.on_check_in = CheckInAction::DeleteAccount;
    let strict = JitPolicy::new(strict).unwrap();
    let changed = latchkey_domain::tenant::JitPolicyChanged {
        tenant_id: CUSTOMER_1,
        policy: strict.clone(),
        by: admin(),
        at: at(3),
    };
    log.tenant(CUSTOMER_1, changed).await;
    let set = ComputerCommand::OverrideJitPolicy {
        policy: Some(strict),
        by: admin(),
        at: at(4),
    };
    log.computer(W11, &admin(), set).await;
    let cleared = ComputerCommand::OverrideJitPolicy {
        policy: None,
        by: admin(),
        at: at(5),
    };
    log.computer(W11, &admin(), cleared).await;

    // nik's check-in fails to take msp-nik out of the group; his next check-out makes the
    // failed removal pointless.
    log.check_out(
        NIK_ON_W11,
        (CUSTOMER_1, NIK, NIK_EMAIL),
        W11,
        LoginMode::Named,
        "msp-nik",
        None,
        10,
    )
    .await;
    let disclose = ComputerCommand::DiscloseOfflineSecret {
        technician_id: NIK,
        by: user(NIK_EMAIL),
        at: at(12),
    };
    log.computer(W11, &user(NIK_EMAIL), disclose).await;
    let checked_in = SessionCheckedIn {
        session_id: NIK_ON_W11,
        computer_id: W11,
        reason: CheckInReason::Manual,
        by: admin(),
        at: at(20),
    };
    log.session(NIK_ON_W11, &admin(), checked_in).await;
    let release = ComputerCommand::ReleaseAccess {
        session_id: NIK_ON_W11,
        at: at(20),
    };
    log.computer(W11, &Actor::System, release).await;
    let failed = ComputerCommand::ReportFailed {
        request_id: latchkey_domain::ids::RequestId(4),
        reason: FailureReason::parse("msp-nik is logged in").unwrap(),
        at: at(21),
    };
    log.computer(W11, &Actor::Agent { computer_id: W11 }, failed)
        .await;
    log.agent_works(W11, 21).await;
    log.check_out(
        NIK_ON_W10,
        (CUSTOMER_1, NIK, NIK_EMAIL),
        W11,
        LoginMode::Named,
        "msp-nik",
        None,
        30,
    )
    .await;
    let retry = ComputerCommand::RetryRequest {
        request_id: latchkey_domain::ids::RequestId(4),
        at: at(31),
    };
    log.computer(W11, &Actor::System, retry).await;
    log.check_in(NIK_ON_W10, W11, CheckInReason::Revoked, Actor::System, 40)
        .await;

    let left = latchkey_domain::technician::TechnicianLeftTenant {
        technician_id: ANA,
        tenant_id: CUSTOMER_1,
        by: admin(),
        at: at(50),
    };
    log.technician(ANA, left).await;
    let offboarded = TechnicianOffboarded {
        technician_id: ANA,
        tenants: vec![],
        by: admin(),
        at: at(51),
    };
    log.technician(ANA, offboarded).await;

    let decommission = ComputerCommand::Decommission {
        by: admin(),
        at: at(60),
    };
    log.computer(W11, &admin(), decommission).await;
    log.agent_works(W11, 61).await;

    // A check-out that comes too late for the computer.
    let late = nik_on_w11(ANA_ON_W11, at(70));
    let grant = late.access_grant();
    log.session(ANA_ON_W11, &admin(), late).await;
    let refused = log
        .computer(
            W11,
            &Actor::System,
            ComputerCommand::GrantAccess { grant, at: at(70) },
        )
        .await;
    let reason = refused
        .iter()
        .find_map(|e| match e {
            ComputerEvent::SessionAccessFailed(f) => Some(f.reason.clone()),
            _ => None,
        })
        .unwrap();
    let provisioning_failed = latchkey_domain::session::SessionProvisioningFailed {
        session_id: ANA_ON_W11,
        computer_id: W11,
        reason,
        at: at(71),
    };
    log.session(ANA_ON_W11, &Actor::System, provisioning_failed)
        .await;
    let release = ComputerCommand::ReleaseAccess {
        session_id: ANA_ON_W11,
        at: at(71),
    };
    log.computer(W11, &Actor::System, release).await;

    let models = built(&log).await;
    let all = everything(&models);
    assert_eq!(
        all.len(),
        all_events(&log.store).await.len(),
        "one line per event"
    );
    let said = sentences(&all);
    for expected in [
        "admin@msp.example changed the JIT policy of customer-1 to: provisioning on, admin group \
         each computer's own, at check-in delete the account, account reuse off, sessions of at \
         most 30 minutes, 24-character passwords of lowercase, uppercase, digits and symbols, \
         password rotation at check-in on, named accounts msp-{username}",
        "admin@msp.example removed the JIT policy override of W11-L-PASSWORD; the JIT policy of \
         customer-1 applies again",
        "nik@nikpot.com was shown the offline TOTP secret (generation 1) of account msp-nik on \
         W11-L-PASSWORD",
        "admin@msp.example checked in the session of nik@nikpot.com on W11-L-PASSWORD with \
         account msp-nik",
        "agent of W11-L-PASSWORD no longer needs to remove msp-nik from Administrators: a later \
         change made request 4 unnecessary",
        "latchkey revoked the session of nik@nikpot.com on W11-L-PASSWORD with account msp-nik",
        "admin@msp.example removed technician ana@msp.example from customer-1",
        "admin@msp.example offboarded technician ana@msp.example",
        "admin@msp.example decommissioned the computer W11-L-PASSWORD",
        "W11-L-PASSWORD is retiring account msp-nik because the computer was decommissioned",
        "the offline TOTP secret (generation 1) of account msp-nik on W11-L-PASSWORD was revoked",
        "agent of W11-L-PASSWORD was asked to delete account msp-nik, to clean up (request 11)",
        "agent of W11-L-PASSWORD verified: account msp-nik was deleted",
        "admin@msp.example, for nik@nikpot.com, checked out admin access to W11-L-PASSWORD \
         with account msp-nik until 2026-11-23 11:10:00 UTC",
        "admin access for nik@nikpot.com could not be given on W11-L-PASSWORD: the computer has \
         been decommissioned",
        "nik@nikpot.com could not get admin access to W11-L-PASSWORD with account msp-nik: the \
         computer has been decommissioned",
        "W11-L-PASSWORD is releasing the admin access of nik@nikpot.com: nothing had been \
         granted yet",
    ] {
        assert!(
            said.contains(&expected),
            "missing {expected:?} in {said:#?}"
        );
    }
    let set = all
        .iter()
        .find(|e| e.event_type == "ComputerJitPolicyOverridden")
        .unwrap();
    assert!(set
        .sentence
        .starts_with("admin@msp.example set the JIT policy of W11-L-PASSWORD to: "));
    // ana's offboarding, in no tenant any more, is one tenant-less line.
    let offboarded: Vec<_> = all
        .iter()
        .filter(|e| e.event_type == "TechnicianOffboarded")
        .collect();
    assert_eq!(offboarded.len(), 1);
    assert_eq!(offboarded[0].tenant_id, None);
    assert_eq!(offboarded[0].technician_id, Some(ANA));
    // The clean-up of nik's named account after decommissioning is nik's, with no session.
    let deleted = all
        .iter()
        .find(|e| e.event_type == "AccountDeleted")
        .unwrap();
    assert_eq!(deleted.technician_id, Some(NIK));
    assert_eq!(deleted.session_id, None);
    assert_eq!(deleted.tenant_id, Some(CUSTOMER_1));
}

#[tokio::test]
async fn an_offline_lockout_reads_as_the_agent_locking_the_accounts_offline_login() {
    let mut log = Log::new();
    register_tenant(&log.store, CUSTOMER_1, "customer-1", LoginMode::Named, 0).await;
    register_technician(&log.store, NIK, "nik", NIK_EMAIL, &[CUSTOMER_1], 1).await;
    log.enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 2).await;
    log.check_out(
        NIK_ON_W11,
        (CUSTOMER_1, NIK, NIK_EMAIL),
        W11,
        LoginMode::Named,
        "msp-nik",
        None,
        10,
    )
    .await;
    let lockout = ComputerCommand::RecordOfflineLockout {
        lockout_id: Uuid::from_u128(4242),
        account: account("msp-nik"),
        technician_id: Some(NIK),
        failures: 5,
        locked_at: at(20),
        locked_until: at(35),
        at: at(50),
    };
    log.computer(W11, &Actor::Agent { computer_id: W11 }, lockout)
        .await;

    let models = built(&log).await;
    let all = everything(&models);
    let line = all
        .iter()
        .find(|e| e.event_type == "OfflineLoginLockedOut")
        .expect("a line for the lockout");
    assert_eq!(
        line.sentence,
        "agent of W11-L-PASSWORD locked offline login to account msp-nik (of nik@nikpot.com) \
         after 5 wrong TOTP codes at 2026-11-23 09:20:00 UTC, refusing every code for it until \
         2026-11-23 09:35:00 UTC"
    );
    assert_eq!(line.computer_id, Some(W11));
    assert_eq!(line.tenant_id, Some(CUSTOMER_1));
    assert_eq!(line.technician_id, Some(NIK));
    assert_eq!(line.account.as_deref(), Some("msp-nik"));
}

#[tokio::test]
async fn a_page_holds_at_most_a_thousand_lines() {
    let log = Log::new();
    for n in 0..1001u128 {
        let registered = TechnicianRegistered {
            technician_id: TechnicianId(Uuid::from_u128(10_000 + n)),
            username: Username::parse(format!("tech{n}")).unwrap(),
            email: Email::parse(format!("tech{n}@msp.example")).unwrap(),
            by: admin(),
            at: at(0),
        };
        log.technician(TechnicianId(Uuid::from_u128(10_000 + n)), registered)
            .await;
    }
    let models = built(&log).await;
    let first = models
        .queries()
        .audit_trail(&AuditFilter {
            limit: u32::MAX,
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(first.entries.len(), 1000);
    let second = models
        .queries()
        .audit_trail(&AuditFilter {
            limit: u32::MAX,
            cursor: first.next_cursor,
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(second.entries.len(), 1);
    assert_eq!(second.next_cursor, None);
    assert_eq!(
        second.entries[0].sentence,
        "admin@msp.example registered technician tech1000@msp.example (username tech1000)"
    );
}

/// The sentences no story above reaches, word for word: a tenant's registration with its
/// policy, a computer's own policy, the agent's inventory and offline logins, the other
/// reasons to retire an account or release access, the shared account's offline secret,
/// someone else acting for a technician, and ids the directory does not know.
#[tokio::test]
async fn the_rarer_sentences_read_as_written() {
    use latchkey_domain::computer::{
        AccountRetirementStarted, AdminGroupInventoried, ComputerDecommissioned, OfflineLoginEnded,
        OfflineLoginLockedOut, OfflineLoginRecorded, OfflineSecretDisclosed, OfflineSecretIssued,
        OsKind, ProvisioningRequested, ProvisioningSuperseded, Purpose, ReleaseOutcome,
        RetireReason, SessionAccessFailed, SessionAccessGranted, SessionAccessReleased,
    };
    use latchkey_domain::ids::{AgentKeyId, RequestId};
    use latchkey_domain::names::Hostname;
    use latchkey_domain::policy::{PasswordAlphabet, PasswordPolicy};
    use latchkey_domain::session::SessionProvisioningFailed;
    use support::administrators;

    let mut log = Log::new();
    register_tenant(&log.store, CUSTOMER_1, "customer-1", LoginMode::Named, 0).await;
    register_technician(&log.store, NIK, "nik", NIK_EMAIL, &[CUSTOMER_1], 1).await;
    register_technician(&log.store, ANA, "ana", ANA_EMAIL, &[CUSTOMER_1], 1).await;
    log.enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 2).await;
    let mac = ComputerCommand::Enroll {
        computer_id: W10,
        tenant_id: CUSTOMER_1,
        hostname: Hostname::parse("MAC-1").unwrap(),
        os: OsKind::Macos,
        agent_key_id: AgentKeyId(Uuid::from_u128(106)),
        admin_group: None,
        by: admin(),
        at: at(2),
    };
    log.computer(W10, &admin(), mac).await;

    let mut own = JitPolicy::default().fields().clone();
    own.provisioning_enabled = false;
    own.admin_group = Some(GroupName::parse("sudo").unwrap());
    own.password = PasswordPolicy::new(
        16,
        PasswordAlphabet {
            lowercase: true,
            uppercase: false,
            digits: true,
            symbols: false,
        },
    )
    .unwrap();
    own.rotate_on_check_in = false;
    let own = ComputerCommand::OverrideJitPolicy {
        policy: Some(JitPolicy::new(own).unwrap()),
        by: admin(),
        at: at(3),
    };
    log.computer(W11, &admin(), own).await;

    // Events written straight to the log, as the aggregate may write them in other states.
    let agent = Actor::Agent { computer_id: W11 };
    let on_w11 = |event: ComputerEvent| (agent.clone(), event);
    log.session(NIK_ON_W11, &admin(), nik_on_w11(NIK_ON_W11, at(10)))
        .await;
    let unknown_session = SessionId(Uuid::from_u128(1999));
    let unknown_computer = ComputerId(Uuid::from_u128(999));
    let msp_nik = || account("msp-nik");
    let shared = || account("msp-1234");
    let events = [
        on_w11(
            AdminGroupInventoried {
                computer_id: W11,
                group: administrators(),
                members: BTreeSet::from(["Administrator".to_owned(), "msp-nik".to_owned()]),
                at: at(11),
            }
            .into(),
        ),
        on_w11(
            AdminGroupInventoried {
                computer_id: W11,
                group: administrators(),
                members: BTreeSet::new(),
                at: at(12),
            }
            .into(),
        ),
        (
            Actor::System,
            ProvisioningRequested {
                computer_id: W11,
                request_id: RequestId(1),
                session_id: Some(NIK_ON_W11),
                purpose: Purpose::Revoke,
                operation: Operation::DeleteAccount {
                    account: msp_nik(),
                    end_logons: false,
                },
                at: at(13),
            }
            .into(),
        ),
        (
            Actor::System,
            ProvisioningRequested {
                computer_id: W11,
                request_id: RequestId(2),
                session_id: None,
                purpose: Purpose::Grant,
                operation: Operation::EnsureAccount { account: shared() },
                at: at(13),
            }
            .into(),
        ),
        (
            Actor::System,
            ProvisioningSuperseded {
                computer_id: W11,
                request_id: RequestId(77),
                at: at(14),
            }
            .into(),
        ),
        (
            Actor::System,
            SessionAccessReleased {
                computer_id: W11,
                session_id: NIK_ON_W11,
                account: Some(msp_nik()),
                outcome: ReleaseOutcome::KeptForOtherSessions,
                at: at(15),
            }
            .into(),
        ),
        (
            Actor::System,
            SessionAccessReleased {
                computer_id: W11,
                session_id: NIK_ON_W11,
                account: None,
                outcome: ReleaseOutcome::Deleted,
                at: at(15),
            }
            .into(),
        ),
        (
            Actor::System,
            SessionAccessReleased {
                computer_id: W11,
                session_id: unknown_session,
                account: None,
                outcome: ReleaseOutcome::NothingGranted,
                at: at(15),
            }
            .into(),
        ),
        (
            Actor::System,
            SessionAccessGranted {
                computer_id: W11,
                session_id: unknown_session,
                account: shared(),
                at: at(16),
            }
            .into(),
        ),
        (
            Actor::System,
            SessionAccessFailed {
                computer_id: W11,
                session_id: unknown_session,
                reason: FailureReason::parse("the agent is too old").unwrap(),
                at: at(16),
            }
            .into(),
        ),
        (
            Actor::System,
            AccountRetirementStarted {
                computer_id: W11,
                account: shared(),
                reason: RetireReason::LoginModeChanged {
                    from: LoginMode::Shared,
                },
                at: at(17),
            }
            .into(),
        ),
        (
            Actor::System,
            AccountRetirementStarted {
                computer_id: W11,
                account: account("msp-ana"),
                reason: RetireReason::TechnicianRemoved { technician_id: ANA },
                at: at(17),
            }
            .into(),
        ),
        (
            Actor::System,
            OfflineSecretIssued {
                computer_id: W11,
                account: shared(),
                technician_id: None,
                generation: 3,
                at: at(18),
            }
            .into(),
        ),
        (
            admin(),
            OfflineSecretDisclosed {
                computer_id: W11,
                account: msp_nik(),
                technician_id: NIK,
                generation: 2,
                by: admin(),
                at: at(18),
            }
            .into(),
        ),
        on_w11(
            OfflineLoginRecorded {
                computer_id: W11,
                login_id: Uuid::from_u128(4243),
                account: msp_nik(),
                technician_id: Some(NIK),
                claimed_by: None,
                generation: 2,
                admin_group: None,
                used_at: at(19),
                until: at(79),
                at: at(20),
            }
            .into(),
        ),
        on_w11(
            OfflineLoginRecorded {
                computer_id: W11,
                login_id: Uuid::from_u128(4244),
                account: shared(),
                technician_id: None,
                claimed_by: Some(ClaimedName::parse("Ann Other").unwrap()),
                generation: 3,
                admin_group: Some(administrators()),
                used_at: at(19),
                until: at(79),
                at: at(20),
            }
            .into(),
        ),
        on_w11(
            OfflineLoginEnded {
                computer_id: W11,
                login_id: Uuid::from_u128(4244),
                account: shared(),
                until: at(79),
                kept_for_session: false,
                at: at(20),
            }
            .into(),
        ),
        on_w11(
            OfflineLoginLockedOut {
                computer_id: W11,
                lockout_id: Uuid::from_u128(4245),
                account: shared(),
                technician_id: None,
                failures: 3,
                locked_at: at(21),
                locked_until: at(36),
                at: at(22),
            }
            .into(),
        ),
        (
            Actor::Agent {
                computer_id: unknown_computer,
            },
            ComputerDecommissioned {
                computer_id: unknown_computer,
                by: admin(),
                at: at(23),
            }
            .into(),
        ),
    ];
    for (by, event) in events {
        let stream = match &event {
            ComputerEvent::ComputerDecommissioned(e) => e.computer_id.stream_name(),
            _ => W11.stream_name(),
        };
        append(&log.store, stream, &by, vec![AnyEvent::Computer(event)]).await;
    }
    let revealed = CredentialRevealed {
        session_id: NIK_ON_W11,
        technician_id: NIK,
        computer_id: W11,
        account: msp_nik(),
        password_version: 1,
        by: admin(),
        at: at(24),
    };
    log.session(NIK_ON_W11, &admin(), revealed).await;
    let activated = SessionActivated {
        session_id: unknown_session,
        at: at(25),
    };
    log.session(unknown_session, &Actor::System, activated)
        .await;
    let failed = SessionProvisioningFailed {
        session_id: unknown_session,
        computer_id: W11,
        reason: FailureReason::parse("the agent is too old").unwrap(),
        at: at(25),
    };
    log.session(unknown_session, &Actor::System, failed).await;
    let checked_in = SessionCheckedIn {
        session_id: unknown_session,
        computer_id: W11,
        reason: CheckInReason::Manual,
        by: admin(),
        at: at(26),
    };
    log.session(unknown_session, &admin(), checked_in).await;

    let models = built(&log).await;
    let all = everything(&models);
    let said = sentences(&all);
    for expected in [
        "admin@msp.example registered the customer tenant customer-1 with technician login mode \
         named; JIT policy: provisioning on, admin group each computer's own, at check-in remove \
         the account from the admin group, account reuse off, sessions of at most 60 minutes, \
         24-character passwords of lowercase, uppercase, digits and symbols, password rotation \
         at check-in on, named accounts msp-{username}",
        "admin@msp.example enrolled the macOS computer MAC-1 in customer-1",
        "admin@msp.example set the JIT policy of W11-L-PASSWORD to: provisioning off, admin \
         group sudo, at check-in remove the account from the admin group, account reuse off, \
         sessions of at most 60 minutes, 16-character passwords of lowercase and digits, \
         password rotation at check-in off, named accounts msp-{username}",
        "agent of W11-L-PASSWORD reported the members of Administrators: Administrator, msp-nik",
        "agent of W11-L-PASSWORD reported the members of Administrators: none",
        "agent of W11-L-PASSWORD was asked to delete account msp-nik, to end the access of \
         nik@nikpot.com (request 1)",
        "agent of W11-L-PASSWORD was asked to make sure account msp-1234 exists, to give access \
         (request 2)",
        "request 77 to agent of W11-L-PASSWORD was made unnecessary by a later change",
        "W11-L-PASSWORD is releasing the admin access of nik@nikpot.com: msp-nik stays in the \
         admin group for other open sessions",
        "W11-L-PASSWORD is releasing the admin access of nik@nikpot.com: msp-nik is being deleted",
        "W11-L-PASSWORD is releasing the admin access of the technician: nothing had been \
         granted yet",
        "admin access for the technician is in place on W11-L-PASSWORD with account msp-1234",
        "admin access for the technician could not be given on W11-L-PASSWORD: the agent is too \
         old",
        "W11-L-PASSWORD is retiring account msp-1234 because the technician login mode of \
         customer-1 is no longer shared",
        "W11-L-PASSWORD is retiring account msp-ana because technician ana@msp.example no longer \
         works for this customer",
        "a new offline TOTP secret (generation 3) was issued for the shared account msp-1234 on \
         W11-L-PASSWORD",
        "admin@msp.example disclosed the offline TOTP secret (generation 2) of account msp-nik on \
         W11-L-PASSWORD to nik@nikpot.com",
        "nik@nikpot.com logged in offline to W11-L-PASSWORD with account msp-nik at 2026-11-23 \
         09:19:00 UTC using its offline TOTP code (generation 2), granted until 2026-11-23 \
         10:19:00 UTC; Latchkey rotates its password again",
        "someone giving the name 'Ann Other' logged in offline to W11-L-PASSWORD with the shared \
         account msp-1234 at 2026-11-23 09:19:00 UTC: the code proved possession of the \
         computer's shared offline secret (generation 3), not who they are; granted until \
         2026-11-23 10:19:00 UTC; Latchkey rotates its password again",
        "the offline login to W11-L-PASSWORD with account msp-1234 (granted until 2026-11-23 \
         10:19:00 UTC) ends now, as W11-L-PASSWORD is back online: Latchkey takes the account \
         out of the admin group, rotates its password, ends its logons and clears its cached \
         sudo credentials",
        "agent of W11-L-PASSWORD locked offline login to account msp-1234 after 3 wrong TOTP \
         codes at 2026-11-23 09:21:00 UTC, refusing every code for it until 2026-11-23 09:36:00 \
         UTC",
        "admin@msp.example decommissioned the computer computer \
         00000000-0000-0000-0000-0000000003e7",
        "admin@msp.example was shown the password of msp-nik on W11-L-PASSWORD, in the session \
         of nik@nikpot.com",
        "session 00000000-0000-0000-0000-0000000007cf became active",
        "session 00000000-0000-0000-0000-0000000007cf could not get admin access to \
         W11-L-PASSWORD: the agent is too old",
        "admin@msp.example checked in session 00000000-0000-0000-0000-0000000007cf on \
         W11-L-PASSWORD",
    ] {
        assert!(
            said.contains(&expected),
            "missing {expected:?} in {said:#?}"
        );
    }

    // A retirement for a technician's removal is that technician's; a release that does not
    // name its account takes the session's; a session nobody knows has no technician.
    let retired = all
        .iter()
        .find(|e| e.event_type == "AccountRetirementStarted" && e.sentence.contains("msp-ana"))
        .unwrap();
    assert_eq!(retired.technician_id, Some(ANA));
    assert_eq!(retired.tenant_id, Some(CUSTOMER_1));
    let deleted = all
        .iter()
        .find(|e| e.sentence.ends_with("msp-nik is being deleted"))
        .unwrap();
    assert_eq!(deleted.account.as_deref(), Some("msp-nik"));
    assert_eq!(deleted.technician_id, Some(NIK));
    let nothing = all
        .iter()
        .find(|e| e.sentence.ends_with("nothing had been granted yet"))
        .unwrap();
    assert_eq!(nothing.session_id, Some(unknown_session));
    assert_eq!(
        (nothing.technician_id, nothing.account.as_deref()),
        (None, None)
    );
}
