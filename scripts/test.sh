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
# ... and with client tokens minted beside it, still without the agent.
cargo clippy --locked --no-default-features --features allocator,client-tokens -- -D warnings
# The API docs for both feature sets: no broken intra-doc link, no warning.
RUSTDOCFLAGS="-D rustdoc::broken_intra_doc_links -D warnings" cargo doc --no-deps --locked
RUSTDOCFLAGS="-D rustdoc::broken_intra_doc_links -D warnings" cargo doc --no-deps --locked --no-default-features --features allocator
RUSTDOCFLAGS="-D rustdoc::broken_intra_doc_links -D warnings" cargo doc --no-deps --locked --no-default-features --features allocator,client-tokens
cargo build --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --profile ci
  # nextest does not run doctests (the allocator's module example is one).
  cargo test --locked --doc
else
  cargo test --locked
fi
