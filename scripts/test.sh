#!/usr/bin/env bash
# Runs the whole test suite: starts the local S3 test servers (installing them on first use),
# runs unit, integration and doc tests against them, and stops the servers again.
#
#   scripts/test.sh                  everything
#   scripts/test.sh -E 'test(cli)'   extra arguments go to cargo nextest (or cargo test)
#
# CROWECODE_KEEP_EMULATORS=1 leaves the servers running afterwards (faster reruns).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
  cargo test --doc --quiet
else
  cargo test --no-fail-fast "$@"
fi
