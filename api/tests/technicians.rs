//! Technicians on the real server (issue 10, items 1 and 6): a username or e-mail address
//! is one technician's for good (409 naming the field, e-mail compared without regard to
//! case, never reused after offboarding), and a tenant admin reaches only their own
//! tenant's technicians: anyone else answers exactly like an id that does not exist, and no
//! answer shows them another tenant.

mod support;

use serde_json::{json, Value};
use support::msp::Msp;

fn text(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
        .to_owned()
}

fn create(msp: &Msp, username: &str, email: &str) -> (u16, Value) {
    msp.call(
        "POST",
        "/v1/technicians",
        &msp.admin,
        json!({"username": username, "email": email}),
    )
}

fn assert_taken(answer: (u16, Value), field: &str) {
    let (status, problem) = answer;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "urn:latchkey:problem:conflict");
    assert_eq!(problem["field"], field, "{problem}");
    assert!(
        text(&problem, "detail").contains("already taken"),
        "{problem}"
    );
}

#[test]
fn two_technicians_never_get_one_username_or_email() {
    let msp = Msp::start();
    let (status, nik) = create(&msp, "nik", "nik@nikpot.com");
    assert_eq!(status, 201, "{nik}");
    assert_taken(create(&msp, "nik", "other@nikpot.com"), "username");
    assert_taken(create(&msp, "nikolai", "Nik@NikPot.COM"), "email");
    let listed = msp.ok("GET", "/v1/technicians", &msp.admin, json!({}));
    let rows = listed["technicians"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["technician_id"], nik["technician_id"]);
    // Others still register.
    let (status, ann) = create(&msp, "ann", "ann@nikpot.com");
    assert_eq!(status, 201, "{ann}");
}

#[test]
fn an_offboarded_technicians_username_and_email_are_never_reused() {
    let msp = Msp::start();
    let (_, nik) = create(&msp, "nik", "nik@nikpot.com");
    let id = text(&nik, "technician_id");
    msp.ok(
        "POST",
        &format!("/v1/technicians/{id}/offboard"),
        &msp.admin,
        json!({}),
    );
    assert_taken(create(&msp, "nik", "nik2@nikpot.com"), "username");
    assert_taken(create(&msp, "nik2", "NIK@nikpot.com"), "email");
}

/// Tenants A and B; bob works for B only, sam for both, joe for neither; A's admin.
struct World {
    msp: Msp,
    a: String,
    b: String,
    bob: String,
    sam: String,
    joe: String,
    admin_a: String,
}

impl World {
    fn build() -> World {
        let msp = Msp::start();
        let tenant = |name: &str| {
            let body = json!({"name": name, "login_mode": "named"});
            text(
                &msp.ok("POST", "/v1/tenants", &msp.admin, body),
                "tenant_id",
            )
        };
        let (a, b) = (tenant("alpha-corp"), tenant("bravo-corp"));
        let technician = |name: &str, tenants: &[&str]| {
            let (status, created) = create(&msp, name, &format!("{name}@msp.example"));
            assert_eq!(status, 201, "{created}");
            let id = text(&created, "technician_id");
            for tenant in tenants {
                let path = format!("/v1/tenants/{tenant}/technicians/{id}");
                msp.ok("PUT", &path, &msp.admin, json!({}));
            }
            id
        };
        let bob = technician("bob", &[&b]);
        let sam = technician("sam", &[&a, &b]);
        let joe = technician("joe", &[]);
        let admin_a = text(
            &msp.ok(
                "POST",
                "/v1/tokens",
                &msp.admin,
                json!({"role": "tenant_admin", "tenant_id": a, "name": "admin@alpha.example"}),
            ),
            "token",
        );
        World {
            msp,
            a,
            b,
            bob,
            sam,
            joe,
            admin_a,
        }
    }

    fn tenants_of(&self, technician: &str) -> Value {
        let path = format!("/v1/technicians/{technician}");
        self.msp.ok("GET", &path, &self.msp.admin, json!({}))["tenants"].clone()
    }

    fn events(&self) -> usize {
        let (_, _, body) =
            self.msp
                .server
                .request("GET", "/v1/events?limit=10000", Some(&self.msp.admin), None);
        body.lines().filter(|l| !l.trim().is_empty()).count()
    }
}

#[test]
fn a_tenant_admin_cannot_reach_another_tenants_technician_or_tell_it_exists() {
    let w = World::build();
    let nobody = uuid::Uuid::now_v7().to_string();
    let before = (w.events(), w.tenants_of(&w.bob), w.tenants_of(&w.joe));
    for method in ["PUT", "DELETE", "GET"] {
        let path = |technician: &str| match method {
            "GET" => format!("/v1/technicians/{technician}"),
            _ => format!("/v1/tenants/{}/technicians/{technician}", w.a),
        };
        let unknown = w
            .msp
            .server
            .request(method, &path(&nobody), Some(&w.admin_a), None);
        assert_eq!(unknown.0, 404, "{method} an unknown id: {unknown:?}");
        for other in [&w.bob, &w.joe] {
            let answer = w
                .msp
                .server
                .request(method, &path(other), Some(&w.admin_a), None);
            assert_eq!(
                answer,
                unknown,
                "{method} {} as A's admin must answer exactly as for an unknown id",
                path(other)
            );
            assert!(!answer.2.contains(&w.b), "B's id leaked: {}", answer.2);
        }
    }
    assert_eq!(
        (w.events(), w.tenants_of(&w.bob), w.tenants_of(&w.joe)),
        before,
        "nothing changed"
    );
}

#[test]
fn a_tenant_admin_is_shown_only_their_own_tenant_of_a_shared_technician() {
    let w = World::build();
    let sam = format!("/v1/tenants/{}/technicians/{}", w.a, w.sam);
    for (method, path) in [
        ("GET", format!("/v1/technicians/{}", w.sam)),
        ("PUT", sam.clone()),
    ] {
        let shown = w.msp.ok(method, &path, &w.admin_a, json!({}));
        assert_eq!(shown["tenants"], json!([w.a]), "{method} {path}: {shown}");
        assert!(!shown.to_string().contains(&w.b), "{shown}");
    }
    // Removing sam from A: the answer shows no tenant, and sam still works for B.
    let left = w.msp.ok("DELETE", &sam, &w.admin_a, json!({}));
    assert_eq!(left["tenants"], json!([]), "{left}");
    assert_eq!(w.tenants_of(&w.sam), json!([w.b]));
    // Now sam is out of A's reach too, and only an MSP admin adds him back.
    let (status, _) = w.msp.call("PUT", &sam, &w.admin_a, json!({}));
    assert_eq!(status, 404);
    w.msp.ok("PUT", &sam, &w.msp.admin, json!({}));
    let mut both = vec![w.a.clone(), w.b.clone()];
    both.sort();
    assert_eq!(w.tenants_of(&w.sam), json!(both));
}
