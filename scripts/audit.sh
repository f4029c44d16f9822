#!/usr/bin/env bash
# Checks Cargo.lock against the RustSec advisory database. The database is a
# git repository this project's CI cannot reach (CI reaches package
# registries only), so this runs where a clone of it exists:
#   scripts/audit.sh /path/to/advisory-db
set -euo pipefail
cd "$(dirname "$0")/.."
db=${1:?usage: scripts/audit.sh /path/to/advisory-db}
command -v cargo-audit >/dev/null 2>&1 || cargo install cargo-audit --locked
cargo audit --db "$db" --no-fetch --deny warnings
