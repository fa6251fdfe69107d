#!/usr/bin/env bash
# Builds and tests each provider alone (`--no-default-features --features X`), so a one-cloud
# build keeps compiling and working: the unit tests, the CLI tests and that provider's
# end-to-end tests, against the same local servers as scripts/test.sh.
#
#   scripts/features.sh              s3, gcs and azure in turn
#   scripts/features.sh azure        one of them
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/emulators.sh start
trap 'scripts/emulators.sh stop' EXIT
# shellcheck disable=SC1090
source "$(scripts/emulators.sh env)"
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN \
      CROWECODE_CLOUD_CONFIG_B64 CROWECODE_CONFIG CROWECODE_HOME CROWECODE_MODELS_DIR \
      AZURE_STORAGE_CONNECTION_STRING AZURE_STORAGE_KEY AZURE_STORAGE_SAS_TOKEN STORAGE_EMULATOR_HOST
export AWS_ACCESS_KEY_ID=crowecode-test AWS_SECRET_ACCESS_KEY=crowecode-test-secret AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

for feature in "${@:-s3 gcs azure}"; do
  for f in $feature; do
    echo "== --no-default-features --features $f"
    # The provider's own tests, the CLI and conformance suites; not the slow fault and property tests.
    cargo nextest run --no-fail-fast --no-default-features --features "$f" \
      -E "not (test(/^faults::|^roundtrip::|^hostile::/))"
  done
done
