//! A full disk under the embedded store: the server stays up, refuses every write with
//! `507 storage-full` (a problem body saying nothing was written) and changes nothing, serves
//! reads, says so in `/healthz` and `/metrics`, and takes writes again by itself once space
//! is freed, without a restart; nothing it acknowledged is lost.
//!
//! The data directory is a small tmpfs mounted in a mount namespace of the server's own
//! (`unshare`, which also works without root through a user namespace), filled from outside
//! through `/proc/PID/root`.

mod support;

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::msp::Msp;
use support::{eventually, Server};

/// Starts `latchkey serve` with its data directory on a fresh `size` tmpfs of its own.
fn start_on_small_disk(data: &Path, size: &str, admin: &str) -> Server {
    let mount =
        format!("mount -t tmpfs -o size={size},mode=0700 latchkey-test \"$0\" && exec \"$@\"");
    let data_arg = data.to_str().unwrap().to_owned();
    // unshare: a mount namespace (and a user namespace mapping us to root in it, so no
    // privilege is needed); exec keeps the pid the server's.
    let wrapper = ["unshare", "-Urm", "sh", "-c", &mount, &data_arg];
    Server::start_wrapped(
        &wrapper,
        data,
        &[],
        &[
            ("LATCHKEY_ADMIN_TOKEN", admin),
            ("LATCHKEY_ADMIN_EMAIL", "admin@msp.example"),
        ],
    )
}

/// The data directory as the server sees it (on its tmpfs).
fn inside(server: &Server, data: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root", server.pid())).join(data.strip_prefix("/").unwrap())
}

/// Fills the server's file system to the last byte; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // What is left is less than a block: fill it byte by byte.
    while let Ok(1) = file.write(&[0]) {}
    let _ = file.sync_all();
    path
}

fn tenant_names(msp: &Msp) -> Vec<String> {
    let (status, body) = msp.call("GET", "/v1/tenants", &msp.admin, json!({}));
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<String> = body["tenants"]
        .as_array()
        .unwrap_or_else(|| panic!("no tenants in {body}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn create_tenant(msp: &Msp, name: &str) -> (u16, Value) {
    msp.call(
        "POST",
        "/v1/tenants",
        &msp.admin,
        json!({"name": name, "login_mode": "named"}),
    )
}

#[test]
fn a_full_disk_refuses_writes_with_507_serves_reads_and_recovers_when_space_is_freed() {
    let data = tempfile::tempdir().unwrap();
    let admin = latchkey_server_stores::tokens::generate_token().1;
    let server = start_on_small_disk(data.path(), "24m", &admin);
    let here = inside(&server, data.path());
    let mut msp = Msp::adopt(server, admin, data);

    let mut setup = msp.setup("named", "W11-FULL");
    let (before, _) = msp.check_out(&mut setup);
    msp.check_in(&mut setup, &before);
    let (status, _) = create_tenant(&msp, "acknowledged-before");
    assert_eq!(status, 201);

    let filler = fill(&here);

    // Writes: refused with 507 and a problem that says nothing was written. A new tenant
    // (event store), a technician's token (token store), a check-out (events and secrets).
    let (status, problem) = create_tenant(&msp, "refused-while-full");
    assert_eq!(status, 507, "{problem}");
    assert_eq!(
        problem["type"], "urn:latchkey:problem:storage-full",
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("nothing was written"), "{detail}");
    let (status, problem) = msp.call(
        "POST",
        "/v1/tokens",
        &msp.admin,
        json!({"role": "technician", "technician_id": setup.nik_id}),
    );
    assert_eq!(status, 507, "{problem}");
    let (status, problem) = msp.call(
        "POST",
        &format!(
            "/v1/tenants/{}/computers/{}/checkout",
            setup.tenant_id, setup.agent.computer_id
        ),
        &setup.nik_token,
        json!({"reason": "printer driver", "ticket": "T-1002"}),
    );
    assert_eq!(status, 507, "{problem}");

    // Reads are served, and the server says what is wrong.
    assert!(msp.server.is_running(), "the server exited");
    assert_eq!(tenant_names(&msp), ["acknowledged-before", "customer-1"]);
    assert_eq!(msp.session_status(&setup.nik_token, &before), "checked_in");
    let (status, health) = msp.server.json("GET", "/healthz", None, None);
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["storage"], "full", "{health}");
    assert_eq!(msp.metric("latchkey_storage_full"), 1.0);

    // Space freed: writes are taken again, by the same process.
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = eventually("a write to be taken again", Duration::from_secs(30), || {
        let (status, body) = create_tenant(&msp, "acknowledged-after");
        (status != 507).then_some((status, body))
    });
    assert_eq!(status, 201, "{body}");
    let (after, _) = msp.check_out(&mut setup);
    msp.check_in(&mut setup, &after);
    assert_eq!(msp.session_status(&setup.nik_token, &after), "checked_in");
    eventually("healthz to be ok again", Duration::from_secs(30), || {
        let (_, health) = msp.server.json("GET", "/healthz", None, None);
        (health["status"] == "ok").then_some(())
    });
    assert_eq!(msp.metric("latchkey_storage_full"), 0.0);

    // Everything acknowledged is there; nothing refused is.
    assert_eq!(
        tenant_names(&msp),
        ["acknowledged-after", "acknowledged-before", "customer-1"]
    );
}
