#!/usr/bin/env bash
# The Python package's tests: builds the wheel with maturin (the binary from the same warm target
# directory, dev profile), installs it into a virtual environment beside the test servers, then runs
# pytest and mypy --strict on the package. Sourced environment: scripts/test-env.sh (test servers).
#
#   scripts/python-tests.sh            after `source scripts/test-env.sh` (scripts/test.sh does it)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CROWECODE_EMU_DIR:-${TMPDIR:-/tmp}/crowecode-emulators}/pyvenv"
# model-signing 1.1.1 (the OMS reference verifier) imports pyOpenSSL without declaring it.
PINS=("maturin==1.16.0" "pytest==8.3.4" "mypy==1.13.0" "model-signing==1.1.1" "pyOpenSSL==26.4.0")
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV" || { echo "python-tests: cannot create $VENV" >&2; exit 1; }
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" || { echo "python-tests: pip install failed" >&2; exit 1; }
  echo "${PINS[*]}" > "$VENV/.pins"
fi
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
(cd python && "$VENV/bin/maturin" build --quiet --profile dev --out "$WHEELS")
"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEELS"/*.whl
echo "== mypy --strict (the package as installed)"
(cd "$WHEELS" && "$VENV/bin/mypy" --strict -p crowecode_cloud)
echo "== pytest python/tests"
(cd python/tests && "$VENV/bin/python" -m pytest -q -p no:cacheprovider .)
