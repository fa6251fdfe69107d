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

# Every part runs whatever an earlier part did; the run fails if any did, and says which.
failed=()
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@" || failed+=("rust tests (cargo nextest)")
  cargo test --doc --quiet || failed+=("doc tests")
else
  cargo test --no-fail-fast "$@" || failed+=("rust tests (cargo test)")
fi

# The Python package: wheel built with maturin, pytest and mypy --strict (skipped only when
# arguments select Rust tests).
if [ $# -eq 0 ]; then
  scripts/python-tests.sh || failed+=("python tests (scripts/python-tests.sh)")
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf 'test.sh: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "test.sh: every part passed"
