# Sourced by scripts/test.sh and scripts/features.sh (from the repository root): starts the test
# servers, stops them on exit unless CROWECODE_KEEP_EMULATORS=1, and sets the environment every
# test run needs.

scripts/emulators.sh start
if [ "${CROWECODE_KEEP_EMULATORS:-0}" != 1 ]; then
  trap 'scripts/emulators.sh stop' EXIT
fi
# shellcheck disable=SC1090
source "$(scripts/emulators.sh env)"

# The tests talk to 127.0.0.1 only: static test credentials stop the AWS credential chain
# before it would probe an instance-metadata address, and nothing of the caller's cloud setup
# (profiles, endpoints, connection strings) leaks in.
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN \
      CROWECODE_CLOUD_CONFIG_B64 CROWECODE_CONFIG CROWECODE_HOME CROWECODE_MODELS_DIR \
      AZURE_STORAGE_CONNECTION_STRING AZURE_STORAGE_KEY AZURE_STORAGE_SAS_TOKEN STORAGE_EMULATOR_HOST
export AWS_ACCESS_KEY_ID=crowecode-test AWS_SECRET_ACCESS_KEY=crowecode-test-secret AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null

# Release 0.1.0 (before versions and tags), for the compatibility tests: built once from git
# history (local provider only: it is all those tests need), kept beside the test servers.
OLD_RELEASE=ac57edd
OLD_DIR="${CROWECODE_EMU_DIR:-${TMPDIR:-/tmp}/crowecode-emulators}/release-$OLD_RELEASE"
if [ ! -x "$OLD_DIR/crowecode-cloud" ]; then
  git cat-file -e "$OLD_RELEASE^{commit}" 2>/dev/null || {
    echo "test-env: commit $OLD_RELEASE (release 0.1.0) is not in this clone's history; the compatibility tests need it" >&2
    exit 1
  }
  echo "test-env: building release 0.1.0 ($OLD_RELEASE) for the compatibility tests" >&2
  rm -rf "$OLD_DIR/src" && mkdir -p "$OLD_DIR/src"
  git archive "$OLD_RELEASE" | tar -x -C "$OLD_DIR/src"
  (cd "$OLD_DIR/src" && CARGO_TARGET_DIR="$OLD_DIR/target" cargo build --quiet --locked --no-default-features) || {
    echo "test-env: building release 0.1.0 failed" >&2
    exit 1
  }
  cp "$OLD_DIR/target/debug/crowecode-cloud" "$OLD_DIR/crowecode-cloud"
fi
export CROWECODE_TEST_OLD_BIN="$OLD_DIR/crowecode-cloud"
