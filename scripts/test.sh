#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite: formatting, lints,
# unit tests and integration tests against a real turnserver and ZooKeeper.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# The packaging test builds the .deb with cargo-deb.
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet

cargo fmt --all -- --check
# Imports only go down the layers in ARCHITECTURE.md, with no circle.
bash scripts/check-layers.sh
cargo clippy --all-targets --locked -- -D warnings
# The allocator library alone, as signalling servers embed it.
cargo clippy --locked --no-default-features --features allocator -- -D warnings
cargo build --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --profile ci
else
  cargo test --locked
fi
