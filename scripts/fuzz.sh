#!/usr/bin/env bash
# Runs each cargo-fuzz target for a while (default 120 s), growing the corpus in fuzz/corpus/, and
# prints the executions libFuzzer reports. Needs a nightly toolchain and `cargo install cargo-fuzz`.
# Fails if a target does not build or finds a crash (saved in fuzz/artifacts/<target>/).
#
#   scripts/fuzz.sh            every target, 120 s each
#   scripts/fuzz.sh 600 extract
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${1:-120}"
shift || true
TARGETS=("${@:-config manifest extract}")
mkdir -p logs
for t in ${TARGETS[*]}; do
  mkdir -p "corpus/$t"
  echo "== $t for ${SECS}s"
  if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -print_final_stats=1 > "logs/$t.log" 2>&1; then
    tail -n 30 "logs/$t.log"
    echo "fuzz target $t failed (build error or crash); see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^Done|stat::number_of_executed_units" "logs/$t.log"
done
