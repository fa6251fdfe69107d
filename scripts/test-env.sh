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
