#!/usr/bin/env bash
# Runs Latchkey's whole test suite: the one command of README.md. It starts whatever the
# tests need by itself: a throw-away PostgreSQL cluster (from the installed initdb and
# pg_ctl, on loopback, torn down on exit) unless LATCHKEY_TEST_POSTGRES_URL already names a
# server. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The PostgreSQL binaries: on PATH, or where Debian's packages put them (newest first).
find_pg_bin() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return 0
  fi
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

PG_TMP=""
PG_USER=""

# Runs a command as the cluster's owner: initdb and postgres refuse to run as root. It runs
# from / : the owner may not enter the checkout, and the tools would say so on every call.
as_pg_user() {
  if [[ -z "$PG_USER" ]]; then
    "$@"
  elif command -v runuser >/dev/null 2>&1; then
    (cd / && runuser -u "$PG_USER" -- "$@")
  else
    (cd / && su -s /bin/sh "$PG_USER" -c "$(printf '%q ' "$@")")
  fi
}

stop_postgres() {
  if [[ -n "$PG_TMP" && -d "$PG_TMP" ]]; then
    if [[ -f "$PG_TMP/data/postmaster.pid" ]]; then
      as_pg_user "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m fast -w stop >/dev/null 2>&1 ||
        as_pg_user "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 ||
        true
    fi
    rm -rf "$PG_TMP"
  fi
}

# A throw-away CA and a server certificate for 127.0.0.1 signed by it, so the tests talk TLS
# to the cluster (every connection prefers TLS) and check the certificate against the CA.
make_certificates() {
  if ! command -v openssl >/dev/null 2>&1; then
    echo "test.sh: openssl is needed for the test cluster's TLS certificate (on Debian:" \
      "apt-get install openssl)" >&2
    exit 1
  fi
  local dir="$PG_TMP/tls"
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=latchkey test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/ext" -out "$dir/server.crt" >/dev/null 2>&1
  chmod 600 "$dir/server.key"
  if [[ -n "$PG_USER" ]]; then
    chown -R "$PG_USER" "$dir"
  fi
  export LATCHKEY_POSTGRES_CA="$dir/ca.crt"
  export LATCHKEY_TEST_POSTGRES_TLS=1
}

start_postgres() {
  if ! PG_BIN="$(find_pg_bin)"; then
    echo "test.sh: PostgreSQL's initdb and pg_ctl were not found (on Debian: apt-get install" \
      "postgresql), and LATCHKEY_TEST_POSTGRES_URL is not set" >&2
    exit 1
  fi
  if [[ "$(id -u)" == 0 ]]; then
    PG_USER=nobody
    # /tmp, not $TMPDIR: every parent directory must be reachable by the unprivileged owner.
    PG_TMP="$(mktemp -d /tmp/latchkey-pg.XXXXXX)"
    chown "$PG_USER" "$PG_TMP"
  else
    PG_TMP="$(mktemp -d "${TMPDIR:-/tmp}/latchkey-pg.XXXXXX")"
  fi
  trap stop_postgres EXIT
  trap 'exit 130' INT TERM

  local superuser=latchkey
  as_pg_user "$PG_BIN/initdb" -D "$PG_TMP/data" -U "$superuser" --auth=trust \
    --no-locale --encoding=UTF8 >"$PG_TMP/initdb.log" 2>&1 || {
    cat "$PG_TMP/initdb.log" >&2
    echo "test.sh: initdb failed" >&2
    exit 1
  }
  mkdir -p "$PG_TMP/sock"
  if [[ -n "$PG_USER" ]]; then
    chown "$PG_USER" "$PG_TMP/sock"
  fi
  make_certificates

  # A random free port on loopback; pg_ctl fails if another process took it meanwhile.
  local attempt port
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + RANDOM % 40000))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      continue
    fi
    if as_pg_user "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TMP/sock -c max_connections=300 \
          -c ssl=on -c ssl_cert_file=$PG_TMP/tls/server.crt -c ssl_key_file=$PG_TMP/tls/server.key" \
      start >/dev/null; then
      export LATCHKEY_TEST_POSTGRES_URL="postgres://$superuser@127.0.0.1:$port/postgres"
      echo "test.sh: PostgreSQL $("$PG_BIN/pg_ctl" --version | awk '{print $3}') for the" \
        "tests at $LATCHKEY_TEST_POSTGRES_URL (data in $PG_TMP)" >&2
      return 0
    fi
  done
  tail -n 30 "$PG_TMP/postgres.log" >&2 || true
  echo "test.sh: cannot start PostgreSQL" >&2
  exit 1
}

if [[ -z "${LATCHKEY_TEST_POSTGRES_URL:-}" ]]; then
  start_postgres
fi

# The domain must build on its own, without the features other crates switch on for shared
# dependencies (chrono's clock, for one): a domain that reads the clock fails here.
cargo check --quiet -p latchkey-domain --lib

# `-p CRATE` narrows the run to that crate and `--test NAME` (or --lib, …) to those targets;
# without them, everything runs.
scope=(--workspace)
targets=(--all-targets)
for arg in "$@"; do
  case "$arg" in
    -p | --package | --package=*) scope=() ;;
    --lib | --bins | --bin | --bin=* | --tests | --test | --test=* | --benches | --bench | \
      --bench=* | --examples | --example | --example=* | --doc) targets=() ;;
  esac
done
cargo test "${scope[@]}" "${targets[@]}" "$@"

# The read-model tests once more, on PostgreSQL (the run above used SQLite).
if [[ $# == 0 ]]; then
  LATCHKEY_TEST_READ_MODELS=postgres cargo test -p latchkey-projections --tests
fi

# The KurrentDB backend's own unit tests (mappings, metadata, hashing): they need no server,
# so they run here, with the feature the workspace build leaves off. Its conformance suite
# needs a KurrentDB server, which cannot run here.
if [[ $# == 0 ]]; then
  cargo test -p latchkey-store --features kurrentdb --lib kurrentdb::
fi
