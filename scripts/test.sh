#!/usr/bin/env bash
# Runs Latchkey's whole test suite: the one command of README.md. It starts whatever the
# tests need by itself (today nothing beyond cargo; PostgreSQL arrives with its backend).
set -euo pipefail
cd "$(dirname "$0")/.."

# The domain must build on its own, without the features other crates switch on for shared
# dependencies (chrono's clock, for one): a domain that reads the clock fails here.
cargo check --quiet -p latchkey-domain --lib

cargo test --workspace --all-targets "$@"
