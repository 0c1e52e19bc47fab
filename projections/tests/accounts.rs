//! The accounts read model follows what the computer aggregate decides and what its agent
//! verifies: managed accounts, admin-group memberships (standing privilege, as-of queries)
//! and the agent's pending and failed requests. The events come from the real aggregates,
//! with a simulated agent answering the requests.

mod backend;
mod support;

use latchkey_domain::computer::{
    AccountObservation, AccountOwner, Computer, ComputerCommand, ComputerEvent, Operation, Purpose,
    RequestStatus,
};
use latchkey_domain::ids::{RequestId, SessionId, TechnicianId};
use latchkey_domain::names::{AccountName, FailureReason, GroupName, Hostname};
use latchkey_domain::policy::{CheckInAction, LoginMode};
use latchkey_domain::session::{
    CheckInReason, Session, SessionCheckedOut, SessionCommand, SessionEvent,
};
use latchkey_domain::{Actor, Aggregate, AnyEvent, Timestamp};
use latchkey_projections::{
    FailedRequest, MembershipRemovalRequest, ProvisioningStatus, Queries, ReadModels,
};
use latchkey_store::{EventStore, MemoryStore};
use std::collections::{BTreeMap, BTreeSet};
use support::{
    account, admin, administrators, all_events, append, at, checked_out, enroll, nik_on_w11, ANA,
    CUSTOMER_1, CUSTOMER_2, NIK, W10, W11,
};
use uuid::Uuid;

const S1: SessionId = SessionId(Uuid::from_u128(1001));
const S2: SessionId = SessionId(Uuid::from_u128(1002));

fn remove(name: &str) -> Operation {
    Operation::RemoveFromGroup {
        account: account(name),
        group: administrators(),
    }
}

/// The admin checks `technician_id` out of W11 with the shared account msp-1234.
fn shared(session_id: SessionId, technician_id: TechnicianId, at: Timestamp) -> SessionCheckedOut {
    let cast = (CUSTOMER_1, technician_id, W11);
    checked_out(session_id, cast, LoginMode::Shared, "msp-1234", admin(), at)
}

/// The machine's accounts as the simulated agent keeps them: groups and password version.
type Machine = BTreeMap<AccountName, (BTreeSet<GroupName>, Option<u32>)>;

/// One computer's story: commands go through the real aggregates, their events into the
/// store, and every append is projected at once (so the read model is built in many small
/// batches, as the live one is).
struct Story {
    store: MemoryStore,
    models: ReadModels,
    computer: Vec<ComputerEvent>,
    sessions: BTreeMap<SessionId, Vec<SessionEvent>>,
    machine: Machine,
}

impl Story {
    async fn new() -> Self {
        let mut story = Story {
            store: MemoryStore::new(),
            models: backend::fresh().await,
            computer: Vec::new(),
            sessions: BTreeMap::new(),
            machine: Machine::new(),
        };
        story
            .on_computer(enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 0))
            .await;
        story
    }

    fn q(&self) -> Queries<'_> {
        self.models.queries()
    }

    async fn append(&mut self, stream: String, events: Vec<AnyEvent>) {
        if events.is_empty() {
            return;
        }
        append(&self.store, stream, &Actor::System, events).await;
        let after = self.models.checkpoint().unwrap();
        let new = self.store.read_all(after, 1000).await.unwrap();
        self.models.apply(&new).unwrap();
    }

    fn computer_state(&self) -> Computer {
        Computer::replay(&self.computer)
    }

    async fn on_computer(&mut self, command: ComputerCommand) -> Vec<ComputerEvent> {
        let events = Computer::decide(&self.computer_state(), command).unwrap();
        self.computer.extend(events.clone());
        let any = events.iter().cloned().map(AnyEvent::Computer).collect();
        self.append(W11.stream_name(), any).await;
        // The process manager's part: a granted session becomes active.
        for event in &events {
            if let ComputerEvent::SessionAccessGranted(granted) = event {
                let at = granted.at;
                self.on_session(granted.session_id, SessionCommand::Activate { at })
                    .await;
            }
        }
        events
    }

    async fn on_session(&mut self, session: SessionId, command: SessionCommand) {
        let history = self.sessions.entry(session).or_default();
        let events = Session::decide(&Session::replay(history.iter()), command).unwrap();
        history.extend(events.clone());
        let any = events.into_iter().map(AnyEvent::Session).collect();
        self.append(session.stream_name(), any).await;
    }

    async fn check_out(&mut self, checked_out: SessionCheckedOut) {
        let (session, at, grant) = (
            checked_out.session_id,
            checked_out.at,
            checked_out.access_grant(),
        );
        let history = self.sessions.entry(session).or_default();
        history.push(checked_out.clone().into());
        self.append(
            session.stream_name(),
            vec![AnyEvent::Session(checked_out.into())],
        )
        .await;
        self.on_computer(ComputerCommand::GrantAccess { grant, at })
            .await;
    }

    async fn check_in(&mut self, session: SessionId, at: Timestamp) {
        let check_in = SessionCommand::CheckIn {
            reason: CheckInReason::Manual,
            by: admin(),
            at,
        };
        self.on_session(session, check_in).await;
        self.on_computer(ComputerCommand::ReleaseAccess {
            session_id: session,
            at,
        })
        .await;
    }

    /// The agent carries out request `request` and reports what it then sees.
    async fn agent_succeeds(&mut self, request: u64, at: Timestamp) {
        let operation = self.computer_state().open_requests[&RequestId(request)]
            .operation
            .clone();
        let name = operation.account().clone();
        match &operation {
            Operation::EnsureAccount { .. } => {
                self.machine.entry(name.clone()).or_default();
            }
            Operation::RotatePassword { version, .. } => {
                self.machine.get_mut(&name).unwrap().1 = Some(*version);
            }
            Operation::AddToGroup { group, .. } => {
                self.machine.get_mut(&name).unwrap().0.insert(group.clone());
            }
            Operation::RemoveFromGroup { group, .. } => {
                if let Some((groups, _)) = self.machine.get_mut(&name) {
                    groups.remove(group);
                }
            }
            Operation::DeleteAccount { .. } => {
                self.machine.remove(&name);
            }
            Operation::PostSession { .. } => {}
        }
        let ended = matches!(operation, Operation::PostSession { .. });
        let verified = AccountObservation {
            processes: ended.then_some(0),
            sudo_cached: ended.then_some(false),
            ..match self.machine.get(&name) {
                Some((groups, version)) => AccountObservation {
                    present: true,
                    groups: groups.clone(),
                    password_version: *version,
                    ..AccountObservation::default()
                },
                None => AccountObservation::default(),
            }
        };
        self.on_computer(ComputerCommand::ReportSucceeded {
            request_id: RequestId(request),
            verified,
            at,
        })
        .await;
    }

    async fn agent_fails(&mut self, request: u64, why: &str, at: Timestamp) {
        self.on_computer(ComputerCommand::ReportFailed {
            request_id: RequestId(request),
            reason: FailureReason::parse(why).unwrap(),
            at,
        })
        .await;
    }

    /// The agent works through everything pending, including what its answers lead to.
    async fn agent_answers_everything(&mut self, at: Timestamp) {
        loop {
            let state = self.computer_state();
            let next = state
                .open_requests
                .values()
                .find(|r| matches!(r.status, RequestStatus::Pending { .. }))
                .map(|r| r.request_id.0);
            match next {
                Some(request) => self.agent_succeeds(request, at).await,
                None => return,
            }
        }
    }

    async fn retry(&mut self, request: u64, at: Timestamp) {
        self.on_computer(ComputerCommand::RetryRequest {
            request_id: RequestId(request),
            at,
        })
        .await;
    }

    fn pending(&self) -> Vec<(u64, u32, Operation)> {
        self.q()
            .pending_requests(W11)
            .unwrap()
            .into_iter()
            .map(|r| (r.request_id, r.attempt, r.operation))
            .collect()
    }

    /// (account, sessions) of each admin-group membership on W11 at `at`.
    fn admins_at(&self, at: Timestamp) -> Vec<(String, Vec<SessionId>)> {
        self.q()
            .admins_as_of(W11, at)
            .unwrap()
            .into_iter()
            .map(|a| (a.account.to_string(), a.sessions))
            .collect()
    }

    fn standing(&self) -> Vec<String> {
        self.q()
            .standing_privilege(None, far_future())
            .unwrap()
            .into_iter()
            .map(|s| format!("{} {} {}", s.hostname, s.account, s.admin_group))
            .collect()
    }
}

#[tokio::test]
async fn pending_requests_appear_and_disappear_as_the_agent_answers() {
    let mut s = Story::new().await;
    assert!(s.pending().is_empty());
    s.check_out(nik_on_w11(S1, at(10))).await;

    let pending = s.q().pending_requests(W11).unwrap();
    assert_eq!(pending.len(), 2, "{pending:#?}");
    assert_eq!(pending[0].request_id, 1);
    assert_eq!(
        pending[0].operation,
        Operation::EnsureAccount {
            account: account("msp-nik")
        }
    );
    assert_eq!(pending[0].session_id, Some(S1));
    assert_eq!(pending[0].purpose, Purpose::Grant);
    assert_eq!(pending[0].attempt, 1);
    assert_eq!(pending[0].requested_at, at(10));
    assert_eq!(
        pending[1].operation,
        Operation::RotatePassword {
            account: account("msp-nik"),
            version: 1
        }
    );
    assert!(
        s.q().pending_requests(W10).unwrap().is_empty(),
        "requests belong to their computer"
    );

    s.agent_succeeds(1, at(11)).await;
    assert_eq!(s.pending().iter().map(|p| p.0).collect::<Vec<_>>(), vec![2]);
    s.agent_succeeds(2, at(11)).await;
    let add = Operation::AddToGroup {
        account: account("msp-nik"),
        group: administrators(),
    };
    assert_eq!(
        s.pending(),
        vec![(3, 1, add)],
        "the join comes only after the rotation is verified"
    );
    s.agent_succeeds(3, at(12)).await;
    assert!(s.pending().is_empty());

    let accounts = s.q().managed_accounts(CUSTOMER_1).unwrap();
    assert_eq!(accounts.len(), 1);
    let nik = &accounts[0];
    assert_eq!(nik.computer_id, W11);
    assert_eq!(nik.hostname.as_str(), "W11-L-PASSWORD");
    assert_eq!(nik.account, account("msp-nik"));
    assert_eq!(nik.owner, AccountOwner::Named { technician_id: NIK });
    assert!(nik.present && !nik.deleted && !nik.retiring);
    assert_eq!(nik.groups, BTreeSet::from([administrators()]));
    assert_eq!(nik.password_version, Some(1));
    assert_eq!(nik.last_rotated_at, Some(at(11)));
    assert_eq!(nik.offline_secret_generation, Some(1));
    assert_eq!(nik.open_sessions, vec![S1]);
    assert!(s.q().managed_accounts(CUSTOMER_2).unwrap().is_empty());
    assert!(s.standing().is_empty(), "the open session accounts for it");
}

#[tokio::test]
async fn a_failed_revocation_is_stuck_until_retried_and_then_pending_again() {
    let mut s = Story::new().await;
    s.check_out(nik_on_w11(S1, at(10))).await;
    s.agent_answers_everything(at(11)).await;
    s.check_in(S1, at(20)).await;
    let ops: Vec<u64> = s.pending().iter().map(|p| p.0).collect();
    assert_eq!(ops, vec![4, 5], "removal, then the rotation");

    s.agent_fails(4, "gpasswd: group 'Administrators' is locked", at(21))
        .await;
    s.agent_succeeds(5, at(21)).await;
    assert!(s.pending().is_empty(), "a failed revocation is not pending");
    let failed = s.q().failed_requests(None).unwrap();
    assert_eq!(
        failed,
        vec![FailedRequest {
            computer_id: W11,
            tenant_id: CUSTOMER_1,
            hostname: Hostname::parse("W11-L-PASSWORD").unwrap(),
            request_id: 4,
            session_id: Some(S1),
            purpose: Purpose::Revoke,
            attempt: 1,
            reason: FailureReason::parse("gpasswd: group 'Administrators' is locked").unwrap(),
            failed_at: at(21),
            operation: remove("msp-nik"),
        }]
    );
    assert_eq!(s.q().failed_requests(Some(CUSTOMER_1)).unwrap(), failed);
    assert!(s.q().failed_requests(Some(CUSTOMER_2)).unwrap().is_empty());
    let standing = s
        .q()
        .standing_privilege(Some(CUSTOMER_1), far_future())
        .unwrap();
    assert_eq!(standing.len(), 1, "the stuck removal leaves the membership");
    assert_eq!(
        standing[0].removal,
        Some(MembershipRemovalRequest {
            request_id: 4,
            operation: remove("msp-nik"),
            status: ProvisioningStatus::Failed,
            attempt: 1,
        })
    );

    s.retry(4, at(25)).await;
    assert_eq!(s.pending(), vec![(4, 2, remove("msp-nik"))]);
    assert!(s.q().failed_requests(None).unwrap().is_empty());
    s.agent_fails(4, "still locked", at(26)).await;
    let failed = s.q().failed_requests(None).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].attempt, failed[0].failed_at), (2, at(26)));
    assert_eq!(failed[0].reason.as_str(), "still locked");

    s.retry(4, at(30)).await;
    assert_eq!(s.pending(), vec![(4, 3, remove("msp-nik"))]);
    s.agent_succeeds(4, at(31)).await;
    assert!(s.pending().is_empty());
    assert!(s.q().failed_requests(None).unwrap().is_empty());
    assert!(s.standing().is_empty());
}

#[tokio::test]
async fn a_failed_grant_request_is_closed_not_stuck() {
    let mut s = Story::new().await;
    s.check_out(nik_on_w11(S1, at(10))).await;
    s.agent_fails(1, "useradd: cannot lock /etc/passwd", at(11))
        .await;
    assert!(
        s.q().failed_requests(None).unwrap().is_empty(),
        "a grant is never retried: its session fails instead"
    );
    assert!(!s.pending().iter().any(|p| p.0 == 1));
}

#[tokio::test]
async fn a_membership_left_after_check_in_is_standing_privilege_until_removed() {
    let mut s = Story::new().await;
    s.check_out(nik_on_w11(S1, at(10))).await;
    s.agent_answers_everything(at(11)).await;
    assert!(s.standing().is_empty());

    s.check_in(S1, at(20)).await;
    let standing = s.q().standing_privilege(None, far_future()).unwrap();
    assert_eq!(s.standing(), vec!["W11-L-PASSWORD msp-nik Administrators"]);
    assert_eq!(standing[0].tenant_id, CUSTOMER_1);
    assert_eq!(standing[0].granted_for, Some(S1));
    assert_eq!(standing[0].joined_at, at(11));
    assert_eq!(standing[0].last_session_closed_at, Some(at(20)));
    assert_eq!(
        standing[0].removal.as_ref().map(|r| r.status),
        Some(ProvisioningStatus::Pending)
    );
    assert_eq!(
        s.q()
            .standing_privilege(Some(CUSTOMER_1), far_future())
            .unwrap(),
        standing
    );
    assert!(s
        .q()
        .standing_privilege(Some(CUSTOMER_2), far_future())
        .unwrap()
        .is_empty());

    s.agent_succeeds(4, at(21)).await; // RemovedFromAdminGroup
    assert!(s.standing().is_empty());
    let nik = &s.q().managed_accounts(CUSTOMER_1).unwrap()[0];
    assert!(nik.groups.is_empty() && nik.present);
    assert!(nik.open_sessions.is_empty());
}

#[tokio::test]
async fn a_shared_account_kept_for_another_session_is_not_standing_privilege() {
    let mut s = Story::new().await;
    s.check_out(shared(S1, NIK, at(10))).await;
    s.agent_answers_everything(at(11)).await;
    s.check_out(shared(S2, ANA, at(15))).await;
    s.agent_answers_everything(at(16)).await;
    assert_eq!(
        s.admins_at(at(18)),
        vec![("msp-1234".to_owned(), vec![S1, S2])],
        "one membership, used by both sessions"
    );

    s.check_in(S1, at(20)).await;
    s.agent_answers_everything(at(21)).await;
    assert!(s.standing().is_empty(), "ana's session still uses it");
    assert_eq!(s.admins_at(at(25)), vec![("msp-1234".to_owned(), vec![S2])]);

    s.check_in(S2, at(30)).await;
    assert_eq!(s.standing(), vec!["W11-L-PASSWORD msp-1234 Administrators"]);
    s.agent_answers_everything(at(31)).await;
    assert!(s.standing().is_empty());
    assert!(s.admins_at(at(32)).is_empty());
}

#[tokio::test]
async fn admins_as_of_names_the_session_that_held_the_group() {
    let mut s = Story::new().await;
    s.check_out(nik_on_w11(S1, at(10))).await;
    s.agent_succeeds(1, at(11)).await;
    s.agent_succeeds(2, at(11)).await;
    s.agent_succeeds(3, at(12)).await; // joined
    s.check_in(S1, at(30)).await;
    s.agent_answers_everything(at(31)).await; // removed
    s.check_out(nik_on_w11(S2, at(40))).await;
    s.agent_answers_everything(at(42)).await; // joined again

    let nik = |sessions: Vec<SessionId>| vec![("msp-nik".to_owned(), sessions)];
    assert!(s.admins_at(at(5)).is_empty(), "before any session");
    assert!(
        s.admins_at(at(11)).is_empty(),
        "checked out, not yet in the group"
    );
    assert_eq!(s.admins_at(at(12)), nik(vec![S1]), "from the verified join");
    assert_eq!(s.admins_at(at(20)), nik(vec![S1]));
    assert_eq!(
        s.admins_at(at(30) + chrono::Duration::seconds(30)),
        nik(vec![]),
        "checked in, the removal not yet verified: a member through no session"
    );
    assert!(s.admins_at(at(31)).is_empty(), "removed at 31");
    assert!(s.admins_at(at(35)).is_empty());
    assert!(
        s.admins_at(at(41)).is_empty(),
        "the second session has not joined yet"
    );
    assert_eq!(s.admins_at(at(50)), nik(vec![S2]));

    let during = s.q().admins_as_of(W11, at(20)).unwrap();
    assert_eq!(during[0].admin_group, administrators());
    assert_eq!(
        (during[0].joined_at, during[0].left_at),
        (at(12), Some(at(31)))
    );
    let now = s.q().admins_as_of(W11, at(50)).unwrap();
    assert_eq!((now[0].joined_at, now[0].left_at), (at(42), None));
    assert!(s.q().admins_as_of(W10, at(20)).unwrap().is_empty());
}

#[tokio::test]
async fn a_membership_the_agent_no_longer_sees_has_ended() {
    let mut s = Story::new().await;
    s.check_out(nik_on_w11(S1, at(10))).await;
    s.agent_answers_everything(at(11)).await;
    // Someone takes msp-nik out of Administrators by hand; the agent's next observation
    // (the rotation at check-in, answered before the removal) shows it.
    s.machine
        .get_mut(&account("msp-nik"))
        .unwrap()
        .0
        .remove(&administrators());
    s.check_in(S1, at(20)).await;
    assert_eq!(s.standing().len(), 1);
    s.agent_succeeds(5, at(21)).await; // the rotation
    assert!(s.standing().is_empty(), "the verified observation ended it");
    assert!(s.admins_at(at(22)).is_empty());
    assert_eq!(s.pending().iter().map(|p| p.0).collect::<Vec<_>>(), vec![4]);
    s.agent_succeeds(4, at(23)).await;
    let history = s.q().admins_as_of(W11, at(15)).unwrap();
    assert_eq!(
        history[0].left_at,
        Some(at(21)),
        "it ended when it was seen gone"
    );
}

#[tokio::test]
async fn deleting_the_account_ends_its_membership_even_if_the_removal_failed() {
    let mut s = Story::new().await;
    let ephemeral = SessionCheckedOut {
        on_check_in: CheckInAction::DeleteAccount,
        ..checked_out(
            S1,
            (CUSTOMER_1, NIK, W11),
            LoginMode::Ephemeral,
            "nik_566054625600",
            admin(),
            at(10),
        )
    };
    s.check_out(ephemeral).await;
    s.agent_answers_everything(at(11)).await;
    s.check_in(S1, at(20)).await;
    let ops: Vec<Operation> = s.pending().into_iter().map(|p| p.2).collect();
    assert_eq!(ops.len(), 3, "remove, rotate, delete: {ops:#?}");
    s.agent_fails(4, "gpasswd: group 'Administrators' is locked", at(21))
        .await;
    s.agent_succeeds(5, at(21)).await;
    assert_eq!(s.standing().len(), 1);
    s.agent_succeeds(6, at(22)).await; // AccountDeleted
    assert!(s.standing().is_empty());
    assert!(s.admins_at(at(23)).is_empty());

    let account = &s.q().managed_accounts(CUSTOMER_1).unwrap()[0];
    assert_eq!(account.account, support::account("nik_566054625600"));
    assert_eq!(
        account.owner,
        AccountOwner::Ephemeral { technician_id: NIK }
    );
    assert!(account.deleted && !account.present);
    assert!(account.groups.is_empty());
    assert_eq!(
        account.offline_secret_generation, None,
        "ephemeral: online only"
    );
}

#[tokio::test]
async fn replaying_the_log_rebuilds_identical_read_models() {
    let mut s = Story::new().await;
    s.check_out(nik_on_w11(S1, at(10))).await;
    s.agent_answers_everything(at(11)).await;
    s.check_out(shared(S2, ANA, at(12))).await;
    s.agent_answers_everything(at(13)).await;
    s.check_in(S1, at(20)).await;
    s.agent_fails(7, "locked", at(21)).await;
    s.retry(7, at(22)).await;
    s.agent_fails(7, "locked again", at(23)).await;
    s.on_computer(ComputerCommand::Decommission {
        by: admin(),
        at: at(30),
    })
    .await;
    let live = s.models.dump().unwrap();
    for table in [
        "== managed_accounts",
        "== admin_memberships",
        "== provisioning_requests",
    ] {
        assert!(live.contains(table), "{table} missing from\n{live}");
    }
    assert!(live.contains("msp-nik") && live.contains("msp-1234"));
    assert_eq!(s.q().failed_requests(None).unwrap().len(), 1);

    let all = all_events(&s.store).await;
    assert_eq!(s.models.apply(&all).unwrap(), 0, "already applied");
    assert_eq!(s.models.dump().unwrap(), live);

    let mut rebuilt = backend::fresh().await;
    assert_eq!(rebuilt.apply(&all).unwrap(), all.len());
    assert_eq!(
        rebuilt.dump().unwrap(),
        live,
        "one batch or many, the same rows"
    );

    s.models.clear().unwrap();
    assert_ne!(s.models.dump().unwrap(), live);
    s.models.apply(&all).unwrap();
    assert_eq!(s.models.dump().unwrap(), live, "cleared and replayed");
}

/// Later than every story here: "now" for the views that ask what holds now.
fn far_future() -> Timestamp {
    at(100_000)
}

const OFFLINE: Uuid = Uuid::from_u128(4242);

impl Story {
    /// The agent reports the admin group as its machine has it, with the built-in admin.
    async fn inventory(&mut self, at: Timestamp) {
        let mut members: BTreeSet<String> = self
            .machine
            .iter()
            .filter(|(_, (groups, _))| groups.contains(&administrators()))
            .map(|(name, _)| name.to_string())
            .collect();
        members.insert("Administrator".into());
        self.on_computer(ComputerCommand::ReportInventory {
            group: administrators(),
            members,
            at,
        })
        .await;
    }

    /// The agent uploads nik's offline login from minute 30 to 90.
    async fn upload_offline_login(&mut self, group: Option<GroupName>, uploaded: Timestamp) {
        self.on_computer(ComputerCommand::RecordOfflineLogin {
            login_id: OFFLINE,
            account: account("msp-nik"),
            technician_id: Some(NIK),
            claimed_by: None,
            generation: 1,
            admin_group: group,
            used_at: at(30),
            until: at(90),
            at: uploaded,
        })
        .await;
    }

    /// nik has had a session on W11 (so msp-nik exists), long over.
    async fn with_an_earlier_session() -> Self {
        let mut s = Story::new().await;
        s.check_out(nik_on_w11(S1, at(10))).await;
        s.agent_answers_everything(at(11)).await;
        s.check_in(S1, at(20)).await;
        s.agent_answers_everything(at(21)).await;
        s
    }

    fn drift(&self, now: Timestamp) -> Vec<String> {
        self.q()
            .admin_drift(CUSTOMER_1, now)
            .unwrap()
            .into_iter()
            .map(|d| d.member)
            .collect()
    }

    fn standing_at(&self, now: Timestamp) -> Vec<(String, Option<Uuid>)> {
        self.q()
            .standing_privilege(None, now)
            .unwrap()
            .into_iter()
            .map(|s| (s.account.to_string(), s.offline_login.map(|o| o.login_id)))
            .collect()
    }

    fn offline_admins_at(&self, at: Timestamp) -> Vec<(String, Vec<Uuid>)> {
        self.q()
            .admins_as_of(W11, at)
            .unwrap()
            .into_iter()
            .map(|a| {
                let logins = a.offline_logins.iter().map(|o| o.login_id).collect();
                (a.account.to_string(), logins)
            })
            .collect()
    }
}

/// DESIGN.md's views of who is an admin (as of a time, standing privilege, drift) agree
/// about an offline login: during it the account is an admin through the login, which is no
/// standing privilege and no drift; past its end, until the agent is seen to have taken it
/// back, it is both, with the login named; once seen over, it is neither. Uploaded before
/// its end, the login ends at the upload (issue 12: `OfflineLoginEnded`), and the server's
/// removal from the group, once verified, is it seen over.
#[tokio::test]
async fn an_offline_login_is_an_admin_in_every_view_until_it_is_seen_over() {
    let mut s = Story::with_an_earlier_session().await;
    assert!(s.standing_at(far_future()).is_empty());
    // Offline at 30 the agent adds msp-nik to the group; back online it reports the group
    // and uploads the login at 40 (its end would be 90): the server ends it then.
    s.machine
        .get_mut(&account("msp-nik"))
        .unwrap()
        .0
        .insert(administrators());
    s.inventory(at(35)).await;
    s.upload_offline_login(Some(administrators()), at(40)).await;

    let nik = |logins: Vec<Uuid>| vec![("msp-nik".to_owned(), logins)];
    assert_eq!(s.offline_admins_at(at(25)), vec![], "before the login");
    assert_eq!(s.offline_admins_at(at(38)), nik(vec![OFFLINE]));
    let during = s.q().admins_as_of(W11, at(38)).unwrap();
    assert_eq!((during[0].joined_at, during[0].left_at), (at(30), None));
    assert_eq!(during[0].offline_logins[0].technician_id, Some(NIK));
    assert_eq!(
        during[0].offline_logins[0].until,
        at(40),
        "ended at the upload"
    );
    assert!(during[0].sessions.is_empty());
    assert_eq!(
        s.standing_at(at(38)),
        vec![],
        "explained by the offline login"
    );
    assert_eq!(
        s.drift(at(38)),
        vec!["Administrator"],
        "explained by the login"
    );

    // Past its (new) end and still in the group as far as anyone has seen.
    assert_eq!(
        s.standing_at(at(45)),
        vec![("msp-nik".to_owned(), Some(OFFLINE))]
    );
    assert_eq!(s.drift(at(45)), vec!["Administrator", "msp-nik"]);

    // The agent carries out the server's removal at 41 and reports it verified.
    s.agent_answers_everything(at(41)).await;
    assert_eq!(s.standing_at(at(45)), vec![]);
    assert_eq!(s.offline_admins_at(at(45)), vec![]);
    let history = s.q().admins_as_of(W11, at(38)).unwrap();
    assert_eq!(history[0].left_at, Some(at(41)), "ended when seen over");
}

/// Uploaded after the agent's inventory already showed it over, the login is over at once;
/// uploaded without its group (an older agent), it takes the group of the inventory.
#[tokio::test]
async fn an_offline_login_uploaded_after_it_ended_is_over_and_named_in_the_past() {
    let mut s = Story::with_an_earlier_session().await;
    s.inventory(at(95)).await; // msp-nik not in the group any more
    s.upload_offline_login(None, at(100)).await;
    s.agent_answers_everything(at(101)).await;
    assert_eq!(s.standing_at(at(120)), vec![]);
    assert_eq!(s.drift(at(120)), vec!["Administrator"]);
    assert_eq!(s.offline_admins_at(at(120)), vec![]);
    let then = s.q().admins_as_of(W11, at(60)).unwrap();
    assert_eq!(then.len(), 1, "{then:#?}");
    assert_eq!(
        then[0].admin_group,
        administrators(),
        "the inventory's group"
    );
    assert_eq!(then[0].offline_logins[0].login_id, OFFLINE);
    assert_eq!(then[0].left_at, Some(at(95)));
}

/// A verified report on the account is an observation too: the clean-up rotation after the
/// upload shows msp-nik out of the group, so the login is over.
#[tokio::test]
async fn a_verified_report_that_shows_the_account_out_of_the_group_ends_an_offline_login() {
    let mut s = Story::with_an_earlier_session().await;
    s.upload_offline_login(Some(administrators()), at(100))
        .await;
    assert_eq!(
        s.standing_at(at(100)),
        vec![("msp-nik".to_owned(), Some(OFFLINE))],
        "not seen over yet"
    );
    s.agent_answers_everything(at(101)).await; // the rotation: not in Administrators
    assert_eq!(s.standing_at(at(120)), vec![]);
    assert_eq!(
        s.q().admins_as_of(W11, at(60)).unwrap()[0].left_at,
        Some(at(101))
    );
}
