#!/bin/sh
# entrypoint.sh MODEL... -- COMMAND [ARG...]
#
# Downloads each MODEL into the cache (verified; a model already cached costs one manifest read),
# links /models/<MODEL> to it when /models is writable, then replaces itself with COMMAND, so
# the server is PID 1's child no longer and receives signals directly.
set -eu
models=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  models="$models $1"
  shift
done
[ "${1:-}" = "--" ] && shift
if [ -z "$models" ]; then
  echo "usage: entrypoint.sh MODEL... -- COMMAND [ARG...]" >&2
  exit 2
fi
# shellcheck disable=SC2086 # model names never contain spaces
crowecode-cloud download $models
if [ $# -eq 0 ]; then
  exit 0
fi
exec "$@"
