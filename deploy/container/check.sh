#!/usr/bin/env bash
# Build the image here (base from Debian packages, deploy/container/build-base.sh) and check
# it: it starts with a read-only root filesystem as user 10001, answers a rerank over gRPC
# and over HTTP, reports SERVING on grpc.health.v1, and exits 0 on SIGTERM.
#
# Usage (root): deploy/container/check.sh [MODEL_ARCHIVE [MODEL]]
#   MODEL_ARCHIVE: an `edgerank export` archive inside the checkout to bake in; without it
#   the image serves the embedded offline model. MODEL: the name to serve (EDGERANK_MODEL).
# Environment: PODMAN (default: runc, vfs storage, cgroupfs, file events: what nested
# sandboxes allow; crun refuses a cgroup v1/v2 hybrid with a controller on v2), LIMITS
# (default: nofile and nproc at 4096, because podman's defaults raise them and a sandbox
# without CAP_SYS_RESOURCE refuses that), PYTHON (a Python with edgerank's client installed; default: .venv/bin/python),
# PIP_CERT (a TLS-intercepting proxy's CA bundle, handed to the build as a secret),
# GRPC_PORT / HTTP_PORT (host network ports, default 58051 / 58080).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
cd "$SRC"
PODMAN=${PODMAN:-podman --runtime runc --storage-driver=vfs --cgroup-manager=cgroupfs --events-backend=file}
LIMITS=${LIMITS:---ulimit nofile=4096:4096 --ulimit nproc=4096:4096}
PYTHON=${PYTHON:-$SRC/.venv/bin/python}
BASE=localhost/edgerank-base:bookworm
IMAGE=localhost/edgerank:check
GRPC_PORT=${GRPC_PORT:-58051}
HTTP_PORT=${HTTP_PORT:-58080}
ARCHIVE=${1:-}
MODEL=${2:-}
say() { echo "== $* ($(date -u +%H:%M:%S))" >&2; }

if ! $PODMAN image exists "$BASE"; then
  say "building the base from Debian packages"
  PODMAN="$PODMAN" deploy/container/build-base.sh "$BASE" >/dev/null
fi
say "podman build (BASE=$BASE${ARCHIVE:+, MODEL_ARCHIVE=$ARCHIVE})"
start=$(date +%s)
# host network for pip (PyPI) during the build; chroot isolation runs in nested sandboxes
$PODMAN build $LIMITS --isolation=chroot --network=host --layers=false -f Containerfile \
  ${PIP_CERT:+--secret id=pip_ca,src="$PIP_CERT"} \
  --build-arg BASE="$BASE" ${ARCHIVE:+--build-arg MODEL_ARCHIVE="$ARCHIVE"} -t "$IMAGE" . >&2
echo "BUILD_SECONDS $(( $(date +%s) - start ))"
echo "IMAGE_SIZE $($PODMAN image inspect --format '{{.Size}}' "$IMAGE")"
echo "BASE_SIZE $($PODMAN image inspect --format '{{.Size}}' "$BASE")"

name=edgerank-check-$$
$PODMAN rm -f "$name" >/dev/null 2>&1 || true
say "podman run --read-only (host network, ports $GRPC_PORT/$HTTP_PORT)"
$PODMAN run -d --name "$name" $LIMITS --read-only --network=host \
  --security-opt=no-new-privileges --cap-drop=ALL \
  -e EDGERANK_LISTEN="127.0.0.1:$GRPC_PORT" -e EDGERANK_HTTP="127.0.0.1:$HTTP_PORT" \
  ${MODEL:+-e EDGERANK_MODEL="$MODEL"} \
  "$IMAGE" >/dev/null
trap '$PODMAN rm -f "$name" >/dev/null 2>&1 || true' EXIT
echo "USER $($PODMAN exec "$name" id -u)"

say "waiting for SERVING (grpc.health.v1)"
for _ in $(seq 1 600); do
  [ "$($PODMAN inspect --format '{{.State.Running}}' "$name")" = true ] || break
  if out=$($PODMAN exec "$name" /opt/edgerank/bin/python /opt/edgerank/healthcheck.py 2>/dev/null); then
    break
  fi
  sleep 0.5
done
echo "HEALTH ${out:-none}"

QUERY="how do I reset my router password"
D1="The city council approved the new budget for road repairs on Tuesday."
D2="To reset the router password, hold the reset button for ten seconds and log in with the default credentials printed on the label."
D3="Bananas are rich in potassium and make a quick breakfast."
say "rerank over gRPC (edgerank score --server)"
echo "GRPC $("$PYTHON" -m edgerank score --server "127.0.0.1:$GRPC_PORT" --json "$QUERY" "$D1" "$D2" "$D3")"
say "rerank over HTTP (POST /v2/rerank)"
body=$("$PYTHON" -c 'import json,sys; print(json.dumps({"query": sys.argv[1], "documents": sys.argv[2:]}))' "$QUERY" "$D1" "$D2" "$D3")
echo "HTTP $(curl -sS -X POST -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$HTTP_PORT/v2/rerank")"

say "SIGTERM"
$PODMAN kill --signal TERM "$name" >/dev/null
echo "EXIT_CODE $($PODMAN wait "$name")"
$PODMAN logs "$name" 2>&1 | tail -n 5 | sed 's/^/LOG /'
