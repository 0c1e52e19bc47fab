//! What each client command asks the server and prints.

use crate::args::*;
use crate::client::{Api, AuditFilter, SessionFilter, TokenFilter};
use crate::error::CliError;
use crate::show::{
    computer_text, emit, json, listing, maybe_time, owner, policy_text, session_text, show,
    technician_text, tenant_text, text, time, time_text,
};
use latchkey_domain::names::{Email, GroupName, TenantName, Username};
use latchkey_domain::policy::{
    AccountTemplate, JitPolicy, JitPolicyFields, LoginMode, PasswordPolicy, PostSessionActions,
    SessionLength,
};
use latchkey_wire::{
    EventLine, NewEnrollmentToken, NewLoginMode, NewTechnician, NewTenant, NewToken, Rotation,
    TokenScopeView,
};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Events asked for per export page (the server's maximum).
const EXPORT_PAGE: u32 = 10_000;
/// Audit lines asked for per page (the server's maximum).
const AUDIT_PAGE: u64 = 1000;

pub async fn run(command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Tenants {
            connection,
            command,
        } => tenants(&Api::new(connection)?, command).await,
        ClientCommand::Mode {
            connection,
            command: ModeCommand::Set { tenant, mode },
        } => set_mode(&Api::new(connection)?, tenant, mode).await,
        ClientCommand::Policy {
            connection,
            command,
        } => policy(&Api::new(connection)?, command).await,
        ClientCommand::Technicians {
            connection,
            command,
        } => technicians(&Api::new(connection)?, command).await,
        ClientCommand::Tokens {
            connection,
            command,
        } => tokens(&Api::new(connection)?, command).await,
        ClientCommand::EnrollmentToken {
            connection,
            tenant,
            expires_in_minutes,
        } => enrollment_token(&Api::new(connection)?, tenant, expires_in_minutes).await,
        ClientCommand::Computers {
            connection,
            command,
        } => computers(&Api::new(connection)?, command).await,
        ClientCommand::Sessions {
            connection,
            command,
        } => sessions(&Api::new(connection)?, command).await,
        ClientCommand::Accounts { connection, tenant } => {
            accounts(&Api::new(connection)?, tenant).await
        }
        ClientCommand::StandingPrivilege { connection, tenant } => {
            standing_privilege(&Api::new(connection)?, tenant).await
        }
        ClientCommand::Stuck { connection, tenant } => stuck(&Api::new(connection)?, tenant).await,
        ClientCommand::Audit(args) => match &args.command {
            Some(AuditCommand::Tail { .. }) if args.has_filter() => Err(CliError::TailFilters),
            Some(AuditCommand::Tail { after }) => {
                tail(&Api::new(args.connection.clone())?, after.clone()).await
            }
            None => audit(&Api::new(args.connection.clone())?, &args).await,
        },
        ClientCommand::Verify { connection, stream } => {
            verify(&Api::new(connection)?, stream).await
        }
        ClientCommand::Export {
            connection,
            after,
            output,
        } => export(&Api::new(connection)?, after, output.as_deref()).await,
    }
}

async fn tenants(api: &Api, command: TenantsCommand) -> Result<(), CliError> {
    match command {
        TenantsCommand::List => {
            let answer = api.tenants().await?;
            show(api, &answer, |list| {
                listing(
                    &list.tenants,
                    "no tenants yet (create one with `latchkey tenants create`)",
                    &["TENANT_ID", "NAME", "LOGIN_MODE"],
                    |t| {
                        vec![
                            t.tenant_id.to_string(),
                            t.name.clone(),
                            t.login_mode.clone(),
                        ]
                    },
                )
            })
        }
        TenantsCommand::Create { name, mode } => {
            let body = NewTenant {
                name: TenantName::parse(name)?,
                login_mode: mode,
                policy: None,
            };
            let tenant = api.create_tenant(&body).await?;
            show(api, &tenant, |t| format!("created\n{}", tenant_text(t)))
        }
        TenantsCommand::Show { id } => {
            let tenant = api.tenant(id).await?;
            show(api, &tenant, tenant_text)
        }
    }
}

async fn set_mode(api: &Api, tenant: Uuid, mode: LoginMode) -> Result<(), CliError> {
    let answer = api
        .set_login_mode(tenant, &NewLoginMode { login_mode: mode })
        .await?;
    show(api, &answer, |t| {
        let mut line = format!(
            "the technician login mode of {} is now {}",
            t.name,
            t.login_mode.as_str()
        );
        if let Some(account) = &t.shared_account {
            let _ = write!(line, " (shared account {account})");
        }
        line
    })
}

async fn policy(api: &Api, command: PolicyCommand) -> Result<(), CliError> {
    match command {
        PolicyCommand::Show { tenant } => {
            let answer = api.tenant(tenant).await?;
            show(api, &answer.policy, policy_text)
        }
        PolicyCommand::Set(args) => set_policy(api, args).await,
    }
}

async fn set_policy(api: &Api, args: PolicySetArgs) -> Result<(), CliError> {
    let changes = args.changes;
    let mut policy: JitPolicyFields = match &changes.file {
        Some(path) => read_policy_file(path)?,
        None => api.tenant(args.tenant).await?.policy.fields().clone(),
    };
    if let Some(group) = changes.admin_group {
        policy.admin_group = Some(GroupName::parse(group)?);
    }
    if let Some(action) = changes.on_check_in {
        policy.on_check_in = action;
    }
    if let Some(minutes) = changes.max_session_minutes {
        policy.max_session_minutes = SessionLength::minutes(minutes)?;
    }
    if let Some(reuse) = changes.reuse_existing_account {
        policy.reuse_existing_account = reuse;
    }
    if let Some(on) = changes.provisioning {
        policy.provisioning_enabled = on;
    }
    if let Some(on) = changes.rotate_on_check_in {
        policy.rotate_on_check_in = on;
    }
    if let Some(template) = changes.named_account_template {
        policy.named_account_template = AccountTemplate::parse(template)?;
    }
    if let Some(length) = changes.password_length {
        policy.password = PasswordPolicy::new(length, policy.password.alphabet())?;
    }
    if changes.end_logons.is_some() || changes.clear_sudo_credentials.is_some() {
        // Starting from what is in force (the login mode's default when none was chosen).
        let mode = api.tenant(args.tenant).await?.login_mode;
        let mut actions = policy
            .post_session_actions
            .unwrap_or_else(|| PostSessionActions::default_for(mode));
        if let Some(on) = changes.end_logons {
            actions.end_logons = on;
        }
        if let Some(on) = changes.clear_sudo_credentials {
            actions.clear_sudo_credentials = on;
        }
        policy.post_session_actions = Some(actions);
    }
    let policy = JitPolicy::new(policy)?;
    let answer = api.set_policy(args.tenant, &policy).await?;
    if api.json {
        return show(api, &answer.policy, |_| String::new());
    }
    emit(&format!(
        "updated the JIT policy of {}:\n{}",
        answer.name,
        policy_text(&answer.policy).trim_end()
    ))
}

/// A policy from a file: the policy object itself, or a whole tenant as `tenants show
/// --json` prints it.
fn read_policy_file(path: &Path) -> Result<JitPolicyFields, CliError> {
    let refused = |problem: String| CliError::PolicyFile {
        path: path.display().to_string(),
        problem,
    };
    let content =
        std::fs::read_to_string(path).map_err(|e| refused(format!("cannot read it: {e}")))?;
    let value: Value =
        serde_json::from_str(&content).map_err(|e| refused(format!("not valid JSON: {e}")))?;
    let policy = match value {
        Value::Object(mut object) => match object.remove("policy") {
            Some(policy @ Value::Object(_)) if object.contains_key("tenant_id") => policy,
            Some(other) => {
                object.insert("policy".into(), other);
                Value::Object(object)
            }
            None => Value::Object(object),
        },
        _ => return Err(refused("expected a JSON object (the policy)".into())),
    };
    serde_json::from_value(policy).map_err(|e| refused(format!("not a JIT policy: {e}")))
}

async fn technicians(api: &Api, command: TechniciansCommand) -> Result<(), CliError> {
    match command {
        TechniciansCommand::List { tenant } => {
            let answer = api.technicians(tenant).await?;
            show(api, &answer, |list| {
                listing(
                    &list.technicians,
                    "no technicians",
                    &["TECHNICIAN_ID", "USERNAME", "EMAIL", "OFFBOARDED"],
                    |t| {
                        vec![
                            t.technician_id.to_string(),
                            t.username.clone(),
                            t.email.clone(),
                            text(&t.offboarded),
                        ]
                    },
                )
            })
        }
        TechniciansCommand::Create { username, email } => {
            let body = NewTechnician {
                username: Username::parse(username)?,
                email: Email::parse(email)?,
            };
            let answer = api.create_technician(&body).await?;
            show(api, &answer, |t| {
                format!("registered\n{}", technician_text(t))
            })
        }
        TechniciansCommand::Show { id } => {
            let answer = api.technician(id).await?;
            show(api, &answer, technician_text)
        }
        TechniciansCommand::Add { tenant, technician } => {
            let answer = api.join_tenant(tenant, technician).await?;
            show(api, &answer, |t| {
                format!(
                    "{} is now a member of tenant {tenant}\n{}",
                    t.username,
                    technician_text(t)
                )
            })
        }
        TechniciansCommand::Remove { tenant, technician } => {
            let answer = api.leave_tenant(tenant, technician).await?;
            show(api, &answer, |t| {
                format!(
                    "{} is no longer a member of tenant {tenant}\n{}",
                    t.username,
                    technician_text(t)
                )
            })
        }
        TechniciansCommand::Offboard { id } => {
            let answer = api.offboard(id).await?;
            show(api, &answer, |t| {
                format!(
                    "offboarded {}; their sessions are being revoked\n{}",
                    t.technician.username,
                    technician_text(&t.technician)
                )
            })
        }
    }
}

async fn tokens(api: &Api, command: TokensCommand) -> Result<(), CliError> {
    match command {
        TokensCommand::Issue {
            role,
            tenant,
            technician,
            name,
            expires_in,
        } => {
            let body = NewToken {
                role: role.as_str().to_owned(),
                tenant_id: tenant,
                technician_id: technician,
                name: name.map(Email::parse).transpose()?,
                expires_in,
            };
            let answer = api.issue_token(&body).await?;
            show(api, &answer, |t| {
                format!(
                    "API token {} for {} {}, valid until {} (shown once; the server keeps only \
                     its hash):\n{}",
                    t.token_id,
                    t.role,
                    t.name,
                    maybe_time(&t.expires_at),
                    t.token
                )
            })
        }
        TokensCommand::List {
            role,
            technician,
            revoked,
        } => {
            let filter = TokenFilter {
                limit: 1000,
                role,
                technician_id: technician,
                revoked,
            };
            let answer = api.tokens(&filter).await?;
            show(api, &answer, |list| {
                listing(
                    &list.tokens,
                    "no tokens",
                    &[
                        "TOKEN_ID",
                        "HOLDER",
                        "ROLE",
                        "SCOPE",
                        "STATUS",
                        "CREATED",
                        "LAST_USED",
                        "EXPIRES",
                    ],
                    |t| {
                        let scope = match t.scope {
                            None => "all tenants".to_owned(),
                            Some(TokenScopeView::Tenant { tenant_id }) => tenant_id.to_string(),
                            Some(TokenScopeView::Technician { technician_id }) => {
                                technician_id.to_string()
                            }
                            Some(TokenScopeView::Computer { computer_id }) => {
                                computer_id.to_string()
                            }
                        };
                        vec![
                            t.token_id.simple().to_string(),
                            t.holder.clone(),
                            t.role.to_string(),
                            scope,
                            t.status.clone(),
                            maybe_time(&t.created_at),
                            maybe_time(&t.last_used_at),
                            maybe_time(&t.expires_at),
                        ]
                    },
                )
            })
        }
        TokensCommand::Rotate { id, expires_in } => {
            let answer = api.rotate_token(id, &Rotation { expires_in }).await?;
            show(api, &answer, |t| {
                format!(
                    "rotated API token {} of {}, valid until {}; the old secret no longer works \
                     (shown once):\n{}",
                    t.token_id,
                    t.name,
                    maybe_time(&t.expires_at),
                    t.token
                )
            })
        }
        TokensCommand::Revoke { id } => {
            api.revoke_token(id).await?;
            /// What `--json` prints for a revoked token (the server answers 204).
            #[derive(serde::Serialize)]
            struct Revoked {
                token_id: Uuid,
                revoked: bool,
            }
            let answer = Revoked {
                token_id: id,
                revoked: true,
            };
            show(api, &answer, |_| format!("revoked token {}", id.simple()))
        }
    }
}

async fn enrollment_token(api: &Api, tenant: Uuid, minutes: Option<u32>) -> Result<(), CliError> {
    let body = NewEnrollmentToken {
        expires_in_minutes: minutes,
    };
    let answer = api.create_enrollment_token(tenant, &body).await?;
    show(api, &answer, |t| {
        format!(
            "enrollment token for tenant {}, valid until {} (shown once):\n{}\n{}",
            t.tenant_id,
            time(&t.expires_at),
            t.token,
            t.note
        )
    })
}

async fn computers(api: &Api, command: ComputersCommand) -> Result<(), CliError> {
    match command {
        ComputersCommand::List { tenant } => {
            let answer = api.computers(tenant).await?;
            show(api, &answer, |list| {
                listing(
                    &list.computers,
                    "no computers enrolled (see `latchkey enrollment-token`)",
                    &["COMPUTER_ID", "HOSTNAME", "STATE"],
                    |c| {
                        let state = if c.decommissioned {
                            "decommissioned"
                        } else {
                            "enrolled"
                        };
                        vec![
                            c.computer_id.to_string(),
                            c.hostname.clone(),
                            state.to_owned(),
                        ]
                    },
                )
            })
        }
        ComputersCommand::Show { tenant, computer } => {
            let answer = api.computer(tenant, computer).await?;
            show(api, &answer, computer_text)
        }
    }
}

async fn sessions(api: &Api, command: SessionsCommand) -> Result<(), CliError> {
    match command {
        SessionsCommand::List {
            tenant,
            open,
            computer,
            technician,
            limit,
        } => {
            let filter = SessionFilter {
                open,
                computer_id: computer,
                technician_id: technician,
                limit,
            };
            let answer = api.sessions(tenant, &filter).await?;
            let none = if open {
                "no open sessions"
            } else {
                "no sessions"
            };
            show(api, &answer, |list| {
                listing(
                    &list.sessions,
                    none,
                    &[
                        "SESSION_ID",
                        "STATUS",
                        "ACCOUNT",
                        "COMPUTER_ID",
                        "TECHNICIAN_ID",
                        "CHECKED_OUT",
                        "ENDS",
                    ],
                    |s| {
                        let mut status = s.status.clone();
                        if let Some(reason) = &s.check_in_reason {
                            let _ = write!(status, " ({reason})");
                        }
                        let ends = match &s.closed_at {
                            None => format!("expires {}", time_text(&s.expires_at)),
                            Some(closed) => format!("closed {}", time_text(closed)),
                        };
                        vec![
                            s.session_id.to_string(),
                            status,
                            s.account.clone(),
                            s.computer_id.to_string(),
                            s.technician_id.to_string(),
                            time_text(&s.checked_out_at),
                            ends,
                        ]
                    },
                )
            })
        }
        SessionsCommand::Revoke { id } => {
            let answer = api.revoke_session(id).await?;
            show(api, &answer, |s| {
                format!("revoked; access is being taken away\n{}", session_text(s))
            })
        }
    }
}

async fn accounts(api: &Api, tenant: Uuid) -> Result<(), CliError> {
    let answer = api.managed_accounts(tenant).await?;
    show(api, &answer, |list| {
        listing(
            &list.accounts,
            "no managed accounts",
            &[
                "HOSTNAME",
                "ACCOUNT",
                "OWNER",
                "PRESENT",
                "GROUPS",
                "PASSWORD_V",
                "LAST_ROTATED",
                "OPEN_SESSIONS",
            ],
            |a| {
                let present = if a.deleted {
                    "deleted".to_owned()
                } else if a.retiring {
                    format!("{} (retiring)", text(&a.present))
                } else {
                    text(&a.present)
                };
                vec![
                    a.hostname.to_string(),
                    a.account.to_string(),
                    owner(&a.owner),
                    present,
                    text(&a.groups),
                    text(&a.password_version),
                    maybe_time(&a.last_rotated_at),
                    text(&a.open_sessions),
                ]
            },
        )
    })
}

async fn standing_privilege(api: &Api, tenant: Uuid) -> Result<(), CliError> {
    let answer = api.standing_privilege(tenant).await?;
    show(api, &answer, |list| {
        listing(
            &list.standing_privilege,
            "no standing privilege: every admin-group membership belongs to an open session",
            &[
                "HOSTNAME",
                "ACCOUNT",
                "GROUP",
                "SINCE",
                "LAST_SESSION_CLOSED",
                "REMOVAL",
            ],
            |p| {
                let removal = match (&p.offline_login, &p.removal) {
                    (Some(offline), _) => format!(
                        "offline login {} ended {} by the agent's clock; not seen over yet",
                        offline.login_id,
                        text(&offline.until)
                    ),
                    (None, None) => "none under way".to_owned(),
                    (None, Some(removal)) => format!(
                        "request {} {} (attempt {}): {}",
                        removal.request_id,
                        removal.status.as_str(),
                        removal.attempt,
                        removal.operation
                    ),
                };
                vec![
                    p.hostname.to_string(),
                    p.account.to_string(),
                    p.admin_group.to_string(),
                    time(&p.joined_at),
                    maybe_time(&p.last_session_closed_at),
                    removal,
                ]
            },
        )
    })
}

async fn stuck(api: &Api, tenant: Uuid) -> Result<(), CliError> {
    let answer = api.stuck_requests(tenant).await?;
    show(api, &answer, |list| {
        listing(
            &list.stuck_requests,
            "no stuck requests",
            &[
                "HOSTNAME",
                "REQUEST",
                "PURPOSE",
                "OPERATION",
                "ATTEMPT",
                "FAILED_AT",
                "REASON",
            ],
            |r| {
                vec![
                    r.hostname.to_string(),
                    r.request_id.to_string(),
                    text(&r.purpose),
                    r.operation.to_string(),
                    r.attempt.to_string(),
                    time(&r.failed_at),
                    r.reason.to_string(),
                ]
            },
        )
    })
}

async fn audit(api: &Api, args: &AuditArgs) -> Result<(), CliError> {
    let mut filter = AuditFilter {
        tenant_id: args.tenant,
        computer_id: args.computer,
        technician_id: args.technician,
        account: args.account.clone(),
        from: args.from.clone(),
        to: args.to.clone(),
        limit: AUDIT_PAGE,
        cursor: None,
    };
    let mut printed = 0u64;
    let mut any = false;
    loop {
        let remaining = args.limit.map_or(u64::MAX, |limit| limit - printed);
        filter.limit = remaining.min(AUDIT_PAGE);
        let page = api.audit(&filter).await?;
        for entry in &page.entries {
            any = true;
            if api.json {
                emit(&json(entry).to_string())?;
            } else {
                emit(&format!("{}  {}", time(&entry.at), entry.sentence))?;
            }
            printed += 1;
        }
        let done = page.entries.is_empty()
            || page.next_cursor.is_none()
            || page.next_cursor == filter.cursor
            || args.limit.is_some_and(|limit| printed >= limit);
        if done {
            break;
        }
        filter.cursor = page.next_cursor;
    }
    if !any && !api.json {
        eprintln!("latchkey: no audit entries match (the audit trail may lag a moment behind)");
    }
    Ok(())
}

/// One event line in a few words.
fn event_summary(event: &EventLine) -> String {
    format!(
        "{}  {}  {} #{}  {}  by {}",
        time(&event.recorded_at),
        event.position,
        event.stream,
        event.revision,
        event.event_type,
        event.metadata.actor,
    )
}

async fn tail(api: &Api, after: Option<String>) -> Result<(), CliError> {
    let mut response = api.follow_events(after.as_deref()).await?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut last = after;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                return Err(CliError::TailBroken {
                    server: api.server().to_owned(),
                    cause: crate::client::root_cause(&e),
                    last,
                })
            }
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let event: Option<EventLine> = serde_json::from_str(line).ok();
            if let Some(event) = &event {
                last = Some(event.position.clone());
            }
            match (&event, api.json) {
                (Some(event), false) => emit(&event_summary(event))?,
                _ => emit(line)?,
            }
        }
    }
    Err(CliError::TailEnded {
        server: api.server().to_owned(),
        last,
    })
}

async fn verify(api: &Api, stream: Option<String>) -> Result<(), CliError> {
    let answer = api.verify(stream.as_deref()).await?;
    show(api, &answer, |v| match (v.intact, &v.stream) {
        (true, Some(stream)) => format!(
            "intact: stream {stream} has {} events, chained to the last hash {}",
            text(&v.events),
            text(&v.last_hash)
        ),
        (true, None) => format!(
            "intact: {} events in {} streams, every hash chain verified",
            text(&v.events),
            text(&v.streams)
        ),
        (false, _) => String::new(),
    })?;
    if answer.intact {
        return Ok(());
    }
    Err(CliError::Broken {
        stream: text(&answer.stream),
        revision: text(&answer.revision),
        problem: text(&answer.problem),
    })
}

async fn export(api: &Api, after: Option<String>, output: Option<&Path>) -> Result<(), CliError> {
    /// Where the events go: a file being written (renamed into place at the end) or stdout.
    enum Sink {
        File {
            partial: PathBuf,
            file: std::io::BufWriter<std::fs::File>,
        },
        Stdout,
    }
    let mut sink = match output {
        Some(path) => {
            let partial = partial_path(path);
            let file = std::fs::File::create(&partial).map_err(CliError::io(format!(
                "--output {}: cannot create {}",
                path.display(),
                partial.display()
            )))?;
            Sink::File {
                partial,
                file: std::io::BufWriter::new(file),
            }
        }
        None => Sink::Stdout,
    };
    let mut after = after;
    let mut count = 0u64;
    loop {
        let page = api.events(after.as_deref(), EXPORT_PAGE).await?;
        if page.ndjson.is_empty() {
            break;
        }
        count += page.ndjson.iter().filter(|b| **b == b'\n').count() as u64;
        match &mut sink {
            Sink::File { partial, file } => file
                .write_all(&page.ndjson)
                .map_err(CliError::io(format!("cannot write {}", partial.display())))?,
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                match out.write_all(&page.ndjson).and_then(|()| out.flush()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
                    Err(e) => return Err(CliError::io("cannot write to standard output")(e)),
                }
            }
        }
        match page.next_after {
            Some(next) if Some(&next) != after.as_ref() => after = Some(next),
            _ => break,
        }
    }
    if let (Sink::File { partial, file }, Some(path)) = (sink, output) {
        let file = file.into_inner().map_err(|e| {
            CliError::io(format!("cannot write {}", partial.display()))(e.into_error())
        })?;
        file.sync_all()
            .map_err(CliError::io(format!("cannot write {}", partial.display())))?;
        std::fs::rename(&partial, path).map_err(CliError::io(format!(
            "--output {}: cannot move {} into place",
            path.display(),
            partial.display()
        )))?;
        let mut line = format!("exported {count} events to {}", path.display());
        if let Some(after) = &after {
            let _ = write!(line, "; continue later with --after {after}");
        }
        emit(&line)?;
    }
    Ok(())
}

/// `<file>.partial` beside the file.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}
