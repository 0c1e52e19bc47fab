//! The container files cannot be run here (no Docker engine), so this checks what can be
//! checked without one: every Dockerfile docker-compose.yml names exists, and every binary a
//! Dockerfile builds is a real package and binary of this workspace.

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn compose_names_existing_dockerfiles_that_build_real_binaries() {
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let dockerfiles: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("dockerfile:"))
        .map(str::trim)
        .collect();
    assert_eq!(dockerfiles, ["api/Dockerfile", "agent/Dockerfile"]);
    for dockerfile in dockerfiles {
        let text = std::fs::read_to_string(root().join(dockerfile)).unwrap();
        let build = text
            .lines()
            .find(|l| l.contains("cargo build"))
            .unwrap_or_else(|| panic!("{dockerfile} builds nothing"));
        let word_after = |flag: &str| {
            let mut words = build.split_whitespace();
            words.find(|w| *w == flag);
            words
                .next()
                .unwrap_or_else(|| panic!("{dockerfile}: no {flag}"))
        };
        let (package, binary) = (word_after("-p"), word_after("--bin"));
        let manifest = root()
            .join(package.trim_start_matches("latchkey-"))
            .join("Cargo.toml");
        let manifest = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{dockerfile}: {}: {e}", manifest.display()));
        assert!(
            manifest.contains(&format!("name = \"{package}\"")),
            "{dockerfile}"
        );
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{dockerfile}"
        );
        for copied in text.lines().filter_map(|l| l.strip_prefix("COPY agent/")) {
            let file = copied.split_whitespace().next().unwrap();
            assert!(
                root().join("agent").join(file).exists(),
                "{dockerfile}: {file}"
            );
        }
    }
    assert!(compose.contains("image: postgres:"));
    assert!(compose.contains("kurrentdb"));
    assert!(compose.contains("latchkey-2:"));
}
