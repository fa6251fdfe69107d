#!/usr/bin/env bash
# Bucket egress and request counts per model for 1 and 8 machines, with and without a mirror
# (nginx from scripts/emulators.sh in front of moto). Prints a table. Counts bytes and requests,
# not time, so the debug build is enough.
#
#   bench/fleet.sh               a 256 MiB model
#   bench/fleet.sh --mib 1024
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
scripts/emulators.sh start
# shellcheck disable=SC1090
source "$(scripts/emulators.sh env)"
[ "${CROWECODE_KEEP_EMULATORS:-}" = 1 ] || trap 'scripts/emulators.sh stop' EXIT
python3 bench/fleet.py --bin "$TARGET/debug/crowecode-cloud" "$@"
