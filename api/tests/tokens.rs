//! API tokens on the real server (issue 10, item 2): offboarding revokes a technician's
//! tokens (and a technician's token acts only while the technician is active, even if the
//! revocation was lost), tokens expire with a problem that says so, `expires_in` is bounded
//! by the configured maximum, tokens are listed without their secrets, and rotation gives a
//! new secret while the old one stops working.

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

/// The token store is a database of its own, apart from the event log: if the server stops
/// between recording an offboarding and revoking the tokens, the tokens must still not act.
#[actix_web::test]
async fn a_token_of_an_offboarded_technician_is_refused_even_if_its_revocation_was_lost() {
    use actix_web::test as web_test;
    use latchkey_api::auth::{Role, TokenQuery, TokenScope, TokenStore};
    use latchkey_api::commands::{execute, Envelope, StateCache};
    use latchkey_api::http::{self, IdempotencyStore, Services};
    use latchkey_api::secrets::{Key, SecretStore};
    use latchkey_domain::ids::TechnicianId;
    use latchkey_domain::names::{Email, Username};
    use latchkey_domain::technician::{Technician, TechnicianCommand};
    use latchkey_domain::Actor;
    use latchkey_store::{EventStore, MemoryStore, StreamName};
    use std::sync::Arc;

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
    let tokens = TokenStore::open(dir.path().join("tokens.db")).unwrap();
    let token = tokens
        .issue(Role::Technician { technician_id: nik }, "nik@nikpot.com")
        .unwrap();
    let path = dir.path().join("read-models.db");
    let models = latchkey_projections::ReadModels::open(&path).unwrap();
    let services = actix_web::web::Data::new(Services {
        store: store.clone(),
        tokens,
        view: Arc::new(latchkey_projections::ReadView::open(&path).unwrap()),
        secrets: SecretStore::open(dir.path().join("secrets.db"), &Key::generate()).unwrap(),
        idempotency: IdempotencyStore::open(dir.path().join("idempotency.db")).unwrap(),
        progress: tokio::sync::watch::channel(models.checkpoint().unwrap()).1,
        wakeups: Arc::new(latchkey_api::wakeups::StreamWakeups::new()),
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
    assert_eq!(web_test::call_service(&app, sessions()).await.status(), 200);

    // Offboarded in the log, the token store never told (the server stopped in between).
    run(TechnicianCommand::Offboard {
        by: admin,
        at: chrono::Utc::now(),
    })
    .await;
    assert_eq!(web_test::call_service(&app, sessions()).await.status(), 401);
    // And the token store has caught up: the token is revoked for good.
    let listed = services
        .tokens
        .list(&TokenQuery {
            scope: TokenScope::Technician(nik),
            role: None,
            include_revoked: true,
            limit: 10,
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, "revoked");
}
