#!/usr/bin/env bash
# Builds and tests each provider alone (`--no-default-features --features X`), so a one-cloud
# build keeps compiling and working: the unit tests, the CLI tests and that provider's
# end-to-end tests, against the same local servers as scripts/test.sh.
#
#   scripts/features.sh              s3, gcs and azure in turn
#   scripts/features.sh azure        one of them
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/test-env.sh
source scripts/test-env.sh

for feature in "${@:-s3 gcs azure}"; do
  for f in $feature; do
    echo "== --no-default-features --features $f"
    # The provider's own tests, the CLI and conformance suites; not the slow fault and property tests.
    cargo nextest run --no-fail-fast --no-default-features --features "$f" \
      -E "not (test(/^faults::|^roundtrip::|^hostile::/))"
  done
done
