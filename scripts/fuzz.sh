#!/usr/bin/env bash
# The cargo-fuzz targets of fuzz/ (docs/design.md, "Fuzzing"): installs
# cargo-fuzz if missing, builds the targets, and runs each for SECONDS
# (default 20) on the committed corpus in fuzz/corpus/TARGET, which it only
# reads: new inputs go to a temporary directory. A crash, a timeout or a
# leak of memory past the limit stops the run with the input saved under
# fuzz/artifacts/TARGET and a non-zero status.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# The long campaign of the notes is the same command with SECONDS in the
# thousands, by hand. cargo-fuzz passes rustc flags that a stable compiler
# takes only with RUSTC_BOOTSTRAP=1; no sanitizer is used (-s none), so no
# nightly standard library is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none -O
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
max_len() {
    case $1 in
        decode_plan) echo 512 ;;
        loaders) echo 65536 ;;
        devices) echo 2048 ;;
        *) echo 4096 ;;
    esac
}
for t in "${targets[@]}"; do
    new=$(mktemp -d)
    mkdir -p "fuzz/corpus/$t"
    mkdir -p "fuzz/artifacts/$t"
    echo "fuzz: $t for ${secs} s"
    log="$new.log"
    set +e
    cargo fuzz run -s none -O "$t" "$new" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=20 \
        -rss_limit_mb=3000 -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)|ERROR|panicked|SUMMARY' "$log" || true
    rm -rf "$new"
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log"
        rm -f "$log"
        echo "fuzz: $t found a crash (status $status); the input is in fuzz/artifacts/$t"
        exit 1
    fi
    rm -f "$log"
done
