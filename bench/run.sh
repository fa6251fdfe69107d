#!/usr/bin/env bash
# Local-provider benchmark: builds the release binary and prints a table of upload and download
# throughput, CPU and peak RSS next to `cp -r` + `sha256sum` of the same tree.
#
#   bench/run.sh            a 2 GiB model
#   bench/run.sh 1 4        1 GiB and 4 GiB models (peak RSS should not grow with the model)
#
# Work files go under $CROWECODE_BENCH_DIR (default ${TMPDIR:-/tmp}/crowecode-bench) and are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec python3 bench/local.py --bin "$TARGET/release/crowecode-cloud" "${@:-2}"
