//! The JSON Schemas of Latchkey's events, one file per event type and version in
//! `schemas/events/`, generated from the domain's Rust types. They are the contract for agents
//! and auditors written in other languages; a test fails when the committed files drift.

use latchkey_domain::AnyEvent;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the committed schema files live.
pub fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("events")
}

/// Every event schema as it should be committed: file name → pretty JSON (newline-terminated).
pub fn generate() -> BTreeMap<String, String> {
    AnyEvent::descriptors()
        .into_iter()
        .map(|d| {
            let mut schema = (d.schema)();
            schema.insert(
                "$id".into(),
                format!("urn:latchkey:event:{}:v{}", d.event_type, d.version).into(),
            );
            schema.insert("x-latchkey-event-type".into(), d.event_type.into());
            schema.insert("x-latchkey-schema-version".into(), d.version.into());
            let mut text =
                serde_json::to_string_pretty(&schema).expect("a schema serialises to JSON");
            text.push('\n');
            (d.file_name(), text)
        })
        .collect()
}

/// Writes the generated schemas and removes files no event type has any more.
pub fn write_all() -> std::io::Result<usize> {
    let dir = events_dir();
    std::fs::create_dir_all(&dir)?;
    let generated = generate();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".json") && !generated.contains_key(name) {
            std::fs::remove_file(&path)?;
        }
    }
    for (name, text) in &generated {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(generated.len())
}
