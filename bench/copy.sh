#!/usr/bin/env bash
# Copying a model to another bucket and to a directory, side by side with `rclone copy` and
# `s5cmd cp`: see bench/copying.py.
#
#   bench/copy.sh                   four shards of 256 MiB, three runs of each
#   bench/copy.sh --shard-mib 16    a quick run
#
# The tools come from bench/tools.sh (installed on first use, shared with the other benchmarks);
# the release binary is built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/tools.sh
source bench/tools.sh
scripts/emulators.sh start >/dev/null   # installs moto on first use
trap '[ "${CROWECODE_KEEP_EMULATORS:-0}" = 1 ] || scripts/emulators.sh stop' EXIT
# shellcheck disable=SC1090
source "$(scripts/emulators.sh env)"
"$VENV/bin/python" bench/copying.py --bin "$TARGET/release/crowecode-cloud" --tools "$VENV/bin" \
  --moto "$CROWECODE_TEST_EMU_BIN/moto_server" "$@"
