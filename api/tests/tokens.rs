//! API tokens on the real server (issue 10, item 2): offboarding revokes a technician's
//! tokens, whatever crashes and whatever tokens are issued meanwhile; tokens expire with a
//! problem that says so, `expires_in` is bounded by the configured maximum, tokens are listed
//! without their secrets, and rotation gives a new secret while the old one stops working.

mod support;

use serde_json::{json, Value};
use support::msp::Msp;

fn text(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
        .to_owned()
}

/// The secret part of a token (what must never be shown again).
fn secret(token: &str) -> &str {
    &token[token.len() - 43..]
}

#[test]
fn an_offboarded_technicians_tokens_stop_working() {
    let msp = Msp::start();
    let setup = msp.setup("named", "W11-L-PASSWORD");
    let nik = &setup.nik_token;
    let (status, _) = msp.call("GET", "/v1/sessions", nik, json!({}));
    assert_eq!(status, 200);
    // A second token of nik's: offboarding revokes every one.
    let technicians = msp.ok("GET", "/v1/technicians", &msp.admin, json!({}));
    let nik_id = text(&technicians["technicians"][0], "technician_id");
    let second = msp.ok(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "technician", "technician_id": nik_id}),
    );
    let second = text(&second, "token");

    let offboarded = msp.ok(
        "POST",
        &format!("/v1/technicians/{nik_id}/offboard"),
        &msp.admin,
        json!({}),
    );
    assert_eq!(offboarded["offboarded"], true);
    assert_eq!(offboarded["tokens_revoked"], 2, "{offboarded}");
    for token in [nik, &second] {
        let (status, problem) = msp.call("GET", "/v1/sessions", token, json!({}));
        assert_eq!(status, 401, "{problem}");
        assert_eq!(problem["type"], "urn:latchkey:problem:unauthorized");
    }
    let listed = msp.ok(
        "GET",
        &format!("/v1/tokens?technician_id={nik_id}&revoked=true"),
        &msp.admin,
        json!({}),
    );
    let tokens = listed["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{listed}");
    assert!(tokens.iter().all(|t| t["status"] == "revoked"), "{listed}");
    // And no new one is issued for them.
    let (status, problem) = msp.call(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "technician", "technician_id": nik_id}),
    );
    assert_eq!(status, 422, "{problem}");
}

#[test]
fn an_expired_token_answers_401_saying_it_expired() {
    let msp = Msp::start();
    let issued = msp.ok(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "auditor", "name": "aud@msp.example", "expires_in": 1}),
    );
    let token = text(&issued, "token");
    let expires_at: chrono::DateTime<chrono::Utc> = text(&issued, "expires_at").parse().unwrap();
    let (status, _) = msp.call("GET", "/v1/audit", &token, json!({}));
    assert_eq!(status, 200);
    let wait = expires_at - chrono::Utc::now() + chrono::Duration::milliseconds(100);
    std::thread::sleep(wait.to_std().unwrap_or_default());
    let (status, problem) = msp.call("GET", "/v1/audit", &token, json!({}));
    assert_eq!(status, 401, "{problem}");
    assert_eq!(problem["type"], "urn:latchkey:problem:token-expired");
    let detail = text(&problem, "detail");
    assert!(detail.starts_with("the API token expired at "), "{detail}");
    assert!(!detail.contains(secret(&token)));
    // A wrong secret for the same token id says nothing about expiry.
    let forged = format!("{}{}", &token[..token.len() - 43], "A".repeat(43));
    let (status, problem) = msp.call("GET", "/v1/audit", &forged, json!({}));
    assert_eq!(status, 401);
    assert_eq!(problem["type"], "urn:latchkey:problem:unauthorized");
    // Listed as expired.
    let listed = msp.ok("GET", "/v1/tokens?role=auditor", &msp.admin, json!({}));
    assert_eq!(listed["tokens"][0]["status"], "expired", "{listed}");
}

#[test]
fn expires_in_is_bounded_by_the_configured_maximum() {
    let msp = Msp::start_with(&[
        ("LATCHKEY_TOKEN_DEFAULT_EXPIRY", "30m"),
        ("LATCHKEY_TOKEN_MAX_EXPIRY", "1h"),
    ]);
    let ids = || {
        let listed = msp.ok("GET", "/v1/tokens", &msp.admin, json!({}));
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| text(t, "token_id"))
            .collect::<Vec<_>>()
    };
    let before = ids();
    let (status, problem) = msp.call(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "auditor", "name": "aud@msp.example", "expires_in": 3601}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "expires_in");
    assert!(
        text(&problem, "detail").contains("at most 3600 seconds (1 hour)"),
        "{problem}"
    );
    let (status, problem) = msp.call(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "auditor", "name": "aud@msp.example", "expires_in": "soon"}),
    );
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "expires_in");
    assert_eq!(ids(), before, "nothing was issued");
    // Without expires_in: the default.
    let issued = msp.ok(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "auditor", "name": "aud@msp.example"}),
    );
    let expires_at: chrono::DateTime<chrono::Utc> = text(&issued, "expires_at").parse().unwrap();
    let left = expires_at - chrono::Utc::now();
    assert!(
        (29 * 60..=30 * 60).contains(&left.num_seconds()),
        "{left} left"
    );
}

#[test]
fn tokens_are_listed_to_those_who_may_see_them_and_never_with_a_secret() {
    let msp = Msp::start();
    let setup = msp.setup("named", "W11-L-PASSWORD");
    let tenant = |name: &str| {
        let body = json!({"name": name, "login_mode": "named"});
        text(
            &msp.ok("POST", "/v1/tenants", &msp.admin, body),
            "tenant_id",
        )
    };
    let other = tenant("customer-2");
    let issue = |body: Value| text(&msp.ok("POST", "/v1/tokens", &msp.admin, body), "token");
    let admin_a = issue(json!({"role": "tenant_admin", "tenant_id": setup.tenant_id,
                               "name": "admin@customer1.example"}));
    let admin_b = issue(json!({"role": "tenant_admin", "tenant_id": other,
                               "name": "admin@customer2.example"}));
    let every = [
        msp.admin.clone(),
        setup.nik_token.clone(),
        setup.agent.token.clone(),
        admin_a.clone(),
        admin_b.clone(),
    ];

    let all = msp.ok("GET", "/v1/tokens", &msp.admin, json!({}));
    let rows = all["tokens"].as_array().unwrap();
    assert_eq!(rows.len(), every.len(), "{all}");
    for row in rows {
        for key in [
            "token_id",
            "holder",
            "role",
            "scope",
            "status",
            "created_at",
            "last_used_at",
            "expires_at",
        ] {
            assert!(row.get(key).is_some(), "no {key} in {row}");
        }
    }
    let agent = rows.iter().find(|r| r["role"] == "agent").unwrap();
    assert_eq!(
        agent["expires_at"],
        Value::Null,
        "agents' credentials do not expire"
    );
    assert_eq!(
        agent["scope"]["computer_id"],
        setup.agent.computer_id.as_str()
    );
    let admin = rows.iter().find(|r| r["role"] == "msp_admin").unwrap();
    assert!(admin["expires_at"].is_string(), "{admin}");
    assert_eq!(admin["scope"], Value::Null);

    // A tenant admin sees their tenant's tokens only; a technician their own.
    let mine = msp.ok("GET", "/v1/tokens", &admin_a, json!({}));
    let holders: Vec<&str> = mine["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["holder"].as_str().unwrap())
        .collect();
    assert_eq!(holders, ["admin@customer1.example"], "{mine}");
    assert!(!mine.to_string().contains(&other));
    let own = msp.ok("GET", "/v1/tokens", &setup.nik_token, json!({}));
    assert_eq!(own["tokens"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["tokens"][0]["role"], "technician");
    let (status, _) = msp.call("GET", "/v1/tokens", &setup.agent.token, json!({}));
    assert_eq!(status, 403);

    for answer in [all, mine, own] {
        let body = answer.to_string();
        for token in &every {
            assert!(!body.contains(secret(token)), "a secret is listed: {body}");
        }
        assert!(!body.contains("hash"), "{body}");
    }
}

#[test]
fn rotation_gives_a_new_secret_and_the_old_one_stops_working() {
    let msp = Msp::start();
    let setup = msp.setup("named", "W11-L-PASSWORD");
    let issued = msp.ok(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "tenant_admin", "tenant_id": setup.tenant_id,
               "name": "admin@customer1.example"}),
    );
    let (old, id) = (text(&issued, "token"), text(&issued, "token_id"));
    // Its holder rotates it, for an hour.
    let rotated = msp.ok(
        "POST",
        &format!("/v1/tokens/{id}/rotate"),
        &old,
        json!({"expires_in": 3600}),
    );
    let new = text(&rotated, "token");
    assert_eq!(text(&rotated, "token_id"), id);
    assert_ne!(new, old);
    let tenant = format!("/v1/tenants/{}", setup.tenant_id);
    let (status, _) = msp.call("GET", &tenant, &old, json!({}));
    assert_eq!(status, 401, "the old secret stops working at once");
    let (status, _) = msp.call("GET", &tenant, &new, json!({}));
    assert_eq!(status, 200);
    let expires_at: chrono::DateTime<chrono::Utc> = text(&rotated, "expires_at").parse().unwrap();
    assert!((expires_at - chrono::Utc::now()).num_seconds() <= 3600);
    let listed = msp.ok("GET", "/v1/tokens?role=tenant_admin", &msp.admin, json!({}));
    assert!(listed["tokens"][0]["rotated_at"].is_string(), "{listed}");

    // Above the maximum: refused, naming the field, and the token unchanged.
    let (status, problem) = msp.call(
        "POST",
        &format!("/v1/tokens/{id}/rotate"),
        &msp.admin,
        json!({"expires_in": 10 * 365 * 86_400}),
    );
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "expires_in");
    let (status, _) = msp.call("GET", &tenant, &new, json!({}));
    assert_eq!(status, 200);

    // Someone else's token: a technician cannot even see it; an agent's is not rotated here.
    let (status, _) = msp.call(
        "POST",
        &format!("/v1/tokens/{id}/rotate"),
        &setup.nik_token,
        json!({}),
    );
    assert_eq!(status, 404);
    let agent_id = &setup.agent.token[3..35];
    let (status, problem) = msp.call(
        "POST",
        &format!("/v1/tokens/{agent_id}/rotate"),
        &msp.admin,
        json!({}),
    );
    assert_eq!(status, 422, "{problem}");

    // A revoked token is not brought back.
    let (status, _, _) = msp.server.request(
        "DELETE",
        &format!("/v1/tokens/{id}"),
        Some(&msp.admin),
        None,
    );
    assert_eq!(status, 204);
    let (status, _) = msp.call(
        "POST",
        &format!("/v1/tokens/{id}/rotate"),
        &msp.admin,
        json!({}),
    );
    assert_eq!(status, 409);
}

/// The token store is a database of its own, apart from the event log. The one state an
/// offboarding can leave with a live token of an offboarded technician: a token issued while
/// the offboarding was being recorded, then a crash before its second revocation (nothing was
/// acknowledged). The process managers revoke the tokens when they handle the offboarding,
/// even on a server whose cache still has the technician active.
#[actix_web::test]
async fn the_process_managers_revoke_the_tokens_an_offboarding_stopped_after_its_event_left() {
    use actix_web::test as web_test;
    use latchkey_api::http::{self, Services};
    use latchkey_app::commands::{execute, Envelope, StateCache};
    use latchkey_app::runner::ProcessRunner;
    use latchkey_domain::ids::TechnicianId;
    use latchkey_domain::names::{Email, Username};
    use latchkey_domain::technician::{Technician, TechnicianCommand};
    use latchkey_domain::Actor;
    use latchkey_server_stores::idempotency::IdempotencyStore;
    use latchkey_server_stores::secrets::{Key, SecretStore};
    use latchkey_server_stores::tokens::{Role, TokenQuery, TokenScope, TokenStore};
    use latchkey_store::{EventStore, MemoryStore, StreamName};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let nik = TechnicianId(uuid::Uuid::now_v7());
    let stream = StreamName::new(nik.stream_name()).unwrap();
    let envelope = Envelope {
        actor: "user:admin@msp.example".into(),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: None,
    };
    let admin = Actor::User {
        email: Email::parse("admin@msp.example").unwrap(),
    };
    let run = |command: TechnicianCommand| {
        let (store, stream, envelope) = (store.clone(), stream.clone(), envelope.clone());
        async move {
            execute::<Technician, _>(&*store, &stream, &envelope, |_| command.clone())
                .await
                .unwrap();
        }
    };
    run(TechnicianCommand::Register {
        technician_id: nik,
        username: Username::parse("nik").unwrap(),
        email: Email::parse("nik@nikpot.com").unwrap(),
        by: admin.clone(),
        at: chrono::Utc::now(),
    })
    .await;
    let tokens = Arc::new(TokenStore::open(dir.path().join("tokens.db")).unwrap());
    let token = tokens
        .issue(Role::Technician { technician_id: nik }, "nik@nikpot.com")
        .unwrap();
    let path = dir.path().join("read-models.db");
    let models = Arc::new(Mutex::new(
        latchkey_projections::ReadModels::open(&path).unwrap(),
    ));
    let runner = ProcessRunner::new(store.clone(), models.clone()).with_tokens(tokens.clone());
    let services = actix_web::web::Data::new(Services {
        store: store.clone(),
        tokens: tokens.clone(),
        view: Arc::new(latchkey_projections::ReadView::open(&path).unwrap()),
        secrets: SecretStore::open(dir.path().join("secrets.db"), &Key::generate()).unwrap(),
        idempotency: IdempotencyStore::open(dir.path().join("idempotency.db")).unwrap(),
        progress: runner.progress(),
        wakeups: Arc::new(latchkey_app::wakeups::StreamWakeups::new()),
        cache: Arc::new(StateCache::new(100)),
        health: Default::default(),
        limiter: latchkey_api::ratelimit::AuthLimiter::default(),
    });
    let app = web_test::init_service(
        actix_web::App::new()
            .app_data(services.clone())
            .configure(http::configure),
    )
    .await;
    let sessions = || {
        web_test::TestRequest::get()
            .uri("/v1/sessions")
            .insert_header(("Authorization", format!("Bearer {token}")))
            .to_request()
    };
    // Acting once caches nik, active, on this server.
    assert_eq!(web_test::call_service(&app, sessions()).await.status(), 200);
    runner.run_until_idle().await.unwrap();

    // Offboarded in the log, the token store never told (the server stopped in between),
    // and this server's cache not told either (as if another server had recorded it).
    run(TechnicianCommand::Offboard {
        by: admin,
        at: chrono::Utc::now(),
    })
    .await;
    let status = |revoked: bool| TokenQuery {
        scope: TokenScope::Technician(nik),
        role: None,
        include_revoked: revoked,
        limit: 10,
    };
    assert_eq!(tokens.list(&status(false)).unwrap().len(), 1, "still live");
    runner.run_until_idle().await.unwrap();
    let listed = tokens.list(&status(true)).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, "revoked");
    assert_eq!(web_test::call_service(&app, sessions()).await.status(), 401);
}

/// What a crash inside an offboarding leaves, on the real binary killed there
/// (`LATCHKEY_TEST_CRASH_AT`, an `abort()` as `kill -9` would be): no answer, no working
/// token of the technician, and offboarding again completes it.
fn offboarding_cut_by_a_crash(point: &str) -> (Msp, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let admin = latchkey_server_stores::tokens::generate_token().1;
    let env = |crash: bool| {
        let mut env = vec![
            ("LATCHKEY_ADMIN_TOKEN", admin.clone()),
            ("LATCHKEY_ADMIN_EMAIL", "admin@msp.example".to_owned()),
        ];
        if crash {
            env.push(("LATCHKEY_TEST_CRASH_AT", point.to_owned()));
        }
        env
    };
    let start = |crash: bool| {
        let env = env(crash);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        support::Server::start(dir.path(), &env)
    };
    let msp = Msp {
        server: start(true),
        admin: admin.clone(),
        data: dir,
    };
    let setup = msp.setup("named", "W11-L-PASSWORD");
    let nik = setup.nik_token.clone();
    let technicians = msp.ok("GET", "/v1/technicians", &admin, json!({}));
    let nik_id = text(&technicians["technicians"][0], "technician_id");
    assert_eq!(msp.call("GET", "/v1/sessions", &nik, json!({})).0, 200);

    let mut cut = msp.server.send(
        "POST",
        &format!("/v1/technicians/{nik_id}/offboard"),
        Some(&admin),
        Some("{}"),
    );
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut cut, &mut answer);
    assert!(answer.is_empty(), "no answer: {answer}");
    let Msp {
        mut server,
        admin,
        data,
    } = msp;
    assert!(
        server.exited_within(std::time::Duration::from_secs(10)),
        "the server crashed at {point}"
    );
    drop(server);
    let dir = data;
    let server = {
        let env = vec![
            ("LATCHKEY_ADMIN_TOKEN", admin.as_str()),
            ("LATCHKEY_ADMIN_EMAIL", "admin@msp.example"),
        ];
        support::Server::start(dir.path(), &env)
    };
    let msp = Msp {
        server,
        admin,
        data: dir,
    };
    let (status, _) = msp.call("GET", "/v1/sessions", &nik, json!({}));
    assert_eq!(
        status, 401,
        "nik's token acts after an offboarding cut at {point}"
    );
    (msp, nik_id, nik)
}

#[test]
fn an_offboarding_cut_before_its_event_has_revoked_the_tokens_and_is_completed_again() {
    let (msp, nik_id, _) = offboarding_cut_by_a_crash("offboard-before-event");
    let technician = msp.ok(
        "GET",
        &format!("/v1/technicians/{nik_id}"),
        &msp.admin,
        json!({}),
    );
    assert_eq!(technician["offboarded"], false, "{technician}");
    // Not offboarded: a token may be issued, and offboarding again revokes it.
    let issued = msp.ok(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "technician", "technician_id": nik_id}),
    );
    let token = text(&issued, "token");
    assert_eq!(msp.call("GET", "/v1/sessions", &token, json!({})).0, 200);
    let offboarded = msp.ok(
        "POST",
        &format!("/v1/technicians/{nik_id}/offboard"),
        &msp.admin,
        json!({}),
    );
    assert_eq!(offboarded["offboarded"], true);
    assert_eq!(offboarded["tokens_revoked"], 1, "{offboarded}");
    assert_eq!(msp.call("GET", "/v1/sessions", &token, json!({})).0, 401);
}

#[test]
fn an_offboarding_cut_after_its_event_leaves_no_working_token() {
    let (msp, nik_id, _) = offboarding_cut_by_a_crash("offboard-after-event");
    let technician = msp.ok(
        "GET",
        &format!("/v1/technicians/{nik_id}"),
        &msp.admin,
        json!({}),
    );
    assert_eq!(technician["offboarded"], true, "{technician}");
    let (status, problem) = msp.call(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "technician", "technician_id": nik_id}),
    );
    assert_eq!(status, 422, "{problem}");
    // Offboarding again answers, with nothing left to revoke.
    let offboarded = msp.ok(
        "POST",
        &format!("/v1/technicians/{nik_id}/offboard"),
        &msp.admin,
        json!({}),
    );
    assert_eq!(offboarded["tokens_revoked"], 0, "{offboarded}");
}

/// Tokens issued through the API while the technician is offboarded: once the offboarding
/// has been answered, none that was handed out acts, whenever it was issued.
#[test]
fn no_token_issued_concurrently_with_an_offboarding_survives_it() {
    // Every refused token below is a failed authentication: not to be throttled here.
    let msp = Msp::start_with(&[("LATCHKEY_AUTH_FAILURES_PER_ADDRESS", "1000000")]);
    let setup = msp.setup("named", "W11-L-PASSWORD");
    let technicians = msp.ok("GET", "/v1/technicians", &msp.admin, json!({}));
    let nik_id = text(&technicians["technicians"][0], "technician_id");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let handed: Vec<String> = std::thread::scope(|scope| {
        let issuers: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let mut handed = Vec::new();
                    let mut refused = 0;
                    // Until a few have been refused after the offboarding (at most 300
                    // handed out, so the list below shows them all).
                    while refused < 5 && handed.len() < 300 {
                        let (status, issued) = msp.call(
                            "POST",
                            "/v1/tokens",
                            &msp.admin,
                            json!({"role": "technician", "technician_id": nik_id}),
                        );
                        match status {
                            201 => handed.push(text(&issued, "token")),
                            422 if stop.load(std::sync::atomic::Ordering::SeqCst) => refused += 1,
                            422 => {}
                            other => panic!("{other}: {issued}"),
                        }
                    }
                    handed
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        msp.ok(
            "POST",
            &format!("/v1/technicians/{nik_id}/offboard"),
            &msp.admin,
            json!({}),
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        issuers
            .into_iter()
            .flat_map(|issuer| issuer.join().unwrap())
            .collect()
    });
    assert!(!handed.is_empty());
    for token in handed.iter().chain([&setup.nik_token]) {
        let (status, _) = msp.call("GET", "/v1/sessions", token, json!({}));
        assert_eq!(status, 401);
    }
    let listed = msp.ok(
        "GET",
        &format!("/v1/tokens?technician_id={nik_id}&revoked=true&limit=1000"),
        &msp.admin,
        json!({}),
    );
    let tokens = listed["tokens"].as_array().unwrap();
    assert!(tokens.len() > handed.len(), "{} listed", tokens.len());
    assert!(tokens.iter().all(|t| t["status"] == "revoked"), "{listed}");
}
