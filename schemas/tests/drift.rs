//! The committed schemas are exactly what the code generates (set UPDATE_SCHEMAS=1 to
//! rewrite them after an intended change, and commit the result).

use std::collections::BTreeMap;

fn committed() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(latchkey_schemas::events_dir()).expect("schemas/events exists") {
        let path = entry.expect("readable entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            files.insert(
                name,
                std::fs::read_to_string(&path).expect("readable schema"),
            );
        }
    }
    files
}

#[test]
fn committed_schemas_match_the_code() {
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        latchkey_schemas::write_all().expect("schemas written");
    }
    let generated = latchkey_schemas::generate();
    let committed = committed();
    let missing: Vec<_> = generated
        .keys()
        .filter(|k| !committed.contains_key(*k))
        .collect();
    let stale: Vec<_> = committed
        .keys()
        .filter(|k| !generated.contains_key(*k))
        .collect();
    let changed: Vec<_> = generated
        .iter()
        .filter(|(k, v)| committed.get(*k).is_some_and(|c| c != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty() && changed.is_empty(),
        "schemas drifted from the code: missing {missing:?}, stale {stale:?}, changed {changed:?}; \
         run `UPDATE_SCHEMAS=1 cargo test -p latchkey-schemas` if the change is intended \
         (and add a new version instead if stored events of the old shape exist)"
    );
}

#[test]
fn every_event_type_has_a_schema_with_its_name_and_version() {
    let generated = latchkey_schemas::generate();
    assert!(
        generated.len() >= 30,
        "only {} event schemas",
        generated.len()
    );
    for (name, text) in generated {
        let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
        let (event_type, version) = name.trim_end_matches(".json").rsplit_once(".v").unwrap();
        assert_eq!(schema["x-latchkey-event-type"], event_type);
        assert_eq!(schema["x-latchkey-schema-version"].to_string(), version);
        assert_eq!(schema["type"], "object", "{name}");
        jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
    }
}

#[test]
fn a_schema_rejects_an_event_with_a_secret_smuggled_in() {
    // Events carry no password: a body with an extra field is refused by the contract.
    let text = &latchkey_schemas::generate()["PasswordRotated.v1.json"];
    let schema: serde_json::Value = serde_json::from_str(text).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut event = serde_json::json!({
        "computer_id": "00000000-0000-0000-0000-000000000001",
        "request_id": 3,
        "account": "msp-nik",
        "version": 2,
        "verified": {"present": true, "groups": ["sudo"], "password_version": 2},
        "at": "2026-11-23T09:00:00Z"
    });
    assert!(
        validator.is_valid(&event),
        "{:?}",
        validator.validate(&event).err()
    );
    event["password"] = "hunter2".into();
    assert!(!validator.is_valid(&event));
}
