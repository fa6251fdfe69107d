#!/usr/bin/env bash
# Runs the whole test suite: starts the local S3 test servers (installing them on first use),
# runs unit, integration and doc tests against them, then the Python package's tests (pytest and
# mypy on a wheel built with maturin), and stops the servers again.
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

# The Python package: wheel built with maturin, pytest and mypy --strict (skipped only when
# arguments select Rust tests).
if [ $# -eq 0 ]; then
  scripts/python-tests.sh
fi
