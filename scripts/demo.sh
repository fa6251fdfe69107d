#!/usr/bin/env bash
# A complete run of crowecode-cloud on this machine alone: a bucket that is a temp directory
# (the local provider), a small generated model, upload, download, verification, and what
# happens when the bucket holds a damaged piece. Needs cargo and python3 (to read JSON).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "build"
cargo build --quiet
BIN="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/crowecode-cloud"
crowecode-cloud() { "$BIN" "$@"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/crowecode-demo.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export CROWECODE_HOME="$WORK/cache" XDG_CONFIG_HOME="$WORK/config"
unset CROWECODE_CLOUD_CONFIG_B64 CROWECODE_CONFIG

step "a model: two 8 MiB weight shards, config, tokenizer"
mkdir -p "$WORK/models/Demo/tokenizer"
head -c $((8 << 20)) /dev/urandom > "$WORK/models/Demo/model-00001-of-00002.safetensors"
head -c $((8 << 20)) /dev/urandom > "$WORK/models/Demo/model-00002-of-00002.safetensors"
echo '{"architectures":["DemoForCausalLM"],"hidden_size":512}' > "$WORK/models/Demo/config.json"
head -c 4096 /dev/urandom | base64 > "$WORK/models/Demo/tokenizer/tokenizer.json"
ls -l "$WORK/models/Demo"

step "setup: a local directory as the bucket"
run crowecode-cloud setup --provider local --bucket "$WORK/bucket" --prefix models/ --create-bucket
run crowecode-cloud status

step "upload (CI does this once): a version, tagged; the pinned reference goes to stdout"
REF=$(crowecode-cloud upload Demo:prod --models-dir "$WORK/models")
echo "REF=$REF"
run crowecode-cloud upload Demo --models-dir "$WORK/models"

step "list"
run crowecode-cloud list

step "download (every machine does this; the path goes to stdout)"
MODEL=$(crowecode-cloud download Demo)
echo "MODEL=$MODEL"
run diff -r "$WORK/models/Demo" "$MODEL" && echo "byte-identical to the uploaded tree"
run crowecode-cloud download Demo --json

step "a one-line config change: uploaded and fetched in bytes, not the model again"
echo '{"architectures":["DemoForCausalLM"],"hidden_size":1024}' > "$WORK/models/Demo/config.json"
UP=$(crowecode-cloud --json upload Demo --models-dir "$WORK/models")
V2=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["models"][0]["reference"])' "$UP")
python3 -c 'import json,sys; u=json.loads(sys.argv[1])["models"][0]; print("uploaded %d bytes; %.1f MiB were in the bucket already" % (u["sent"], u["reused"] / 2**20))' "$UP"
run crowecode-cloud download Demo
echo "the shards are shared with the first version, not stored twice (hard links):"
ls -li "$(crowecode-cloud download "$REF" -q)/model-00001-of-00002.safetensors" "$(crowecode-cloud download Demo -q)/model-00001-of-00002.safetensors"

step "a pinned download stays on its version while latest moves"
run crowecode-cloud history Demo
PINNED=$(crowecode-cloud download "$REF")
[ "$PINNED" = "$MODEL" ] && echo "$REF is still $PINNED (no request: it is cached)"
echo "the directory's name is the version's short id, a reference too:"
run crowecode-cloud download "$(basename "$PINNED")"
run crowecode-cloud rollback Demo
run crowecode-cloud resolve Demo Demo:prod
run crowecode-cloud tag "$V2" latest

step "a damaged piece in the bucket is refused; the ready model stays"
PACK=$(find "$WORK/bucket/models/_pieces/packs" -name '*.pack' -size +1M | head -1)
cp "$PACK" "$WORK/pack.bak"
printf 'X' | dd of="$PACK" bs=1 seek=5000000 conv=notrunc status=none
set +e
crowecode-cloud download Demo --force   # --force: fetch it all again from the bucket
code=$?
set -e
echo "exit code $code (6 = integrity failure); models/Demo still points at $(readlink "$CROWECODE_HOME/models/Demo")"
[ "$code" = 6 ]
mv "$WORK/pack.bak" "$PACK"   # repaired (`upload --force` from the model's files would too)

step "signed models: the fleet installs only what the CI key signed"
run crowecode-cloud keygen --out "$WORK/keys/ci"
SIGNED=$(crowecode-cloud upload Demo --models-dir "$WORK/models" --force --sign-key "$WORK/keys/ci")
echo "SIGNED=$SIGNED"
export CROWECODE_TRUSTED_KEYS="$WORK/keys/ci.pub" CROWECODE_REQUIRE_SIGNATURE=1
MODEL=$(crowecode-cloud download Demo)
run ls "$MODEL.sig"
run crowecode-cloud history Demo
echo '{"architectures":["DemoForCausalLM"],"hidden_size":4096}' > "$WORK/models/Demo/config.json"
echo "someone with bucket access but no key uploads a changed Demo:"
CROWECODE_REQUIRE_SIGNATURE=0 crowecode-cloud upload Demo --models-dir "$WORK/models" --quiet >/dev/null
set +e
crowecode-cloud download Demo
code=$?
set -e
echo "exit code $code (6 = refused); models/Demo still points at $(readlink "$CROWECODE_HOME/models/Demo")"
[ "$code" = 6 ]
run crowecode-cloud download "$SIGNED"
unset CROWECODE_TRUSTED_KEYS CROWECODE_REQUIRE_SIGNATURE

step "a server under run: prune leaves the version it uses, and says who holds it"
crowecode-cloud run Demo:prod -- sh -c 'echo "serving $CROWECODE_MODEL_PATH"; sleep 3' &
SERVER=$!
sleep 1
set +e
crowecode-cloud prune --max-size 0
code=$?
set -e
echo "exit code $code (8 = --max-size not met: a version is in use)"
[ "$code" = 8 ]
wait "$SERVER"
run crowecode-cloud prune --max-size 0

step "copy to a directory (a disk carried to a site without internet), and install from it there"
run crowecode-cloud copy Demo:prod --to "file://$WORK/disk"
run crowecode-cloud copy Demo:prod --to "file://$WORK/disk"
echo "at the site, a machine of its own (its own config and cache), set up on the disk with the defaults:"
site() { XDG_CONFIG_HOME="$WORK/site-config" CROWECODE_HOME="$WORK/site-cache" "$BIN" "$@"; }
site setup --provider local --bucket "$WORK/disk" >/dev/null
SITE=$(site download Demo:prod)
run diff -r "$(crowecode-cloud download Demo:prod -q)" "$SITE" && echo "the site has the same bytes"

step "done"
echo "bucket: $WORK/bucket   cache: $CROWECODE_HOME   (removed on exit)"
