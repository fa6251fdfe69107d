#!/usr/bin/env bash
# Runs each cargo-fuzz target for a while (default 120 s), growing the corpus in fuzz/corpus/, and
# prints the executions libFuzzer reports. Needs a nightly toolchain and `cargo install cargo-fuzz`.
#
#   scripts/fuzz.sh            every target, 120 s each
#   scripts/fuzz.sh 600 extract
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${1:-120}"
shift || true
TARGETS=("${@:-config manifest extract}")
for t in ${TARGETS[*]}; do
  mkdir -p "corpus/$t"
  echo "== $t for ${SECS}s"
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -print_final_stats=1 2>&1 \
    | grep -E "^Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY" || true
  [ -z "$(ls -A artifacts/"$t" 2>/dev/null)" ] || { echo "crash inputs in fuzz/artifacts/$t"; exit 1; }
done
