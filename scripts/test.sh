#!/usr/bin/env bash
# The test command of the README and of CI: set up, then check formatting and
# lints, then run every test once, in the release profile (one build), close
# with one summary line over all test binaries, and end with a bounded run of
# the fuzz targets (scripts/fuzz.sh; X86BT_FUZZ_SECS seconds each, default 20),
# which cargo-fuzz builds with its own flags.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets --release --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --release --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
# A bounded run of every fuzz target over the committed corpus (fuzz/).
if [ "$status" -eq 0 ]; then
    scripts/fuzz.sh "${X86BT_FUZZ_SECS:-20}" || status=$?
fi
exit "$status"
