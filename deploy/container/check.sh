#!/usr/bin/env bash
# Build and run the image with deploy/container/up.sh (the README's one command), then check
# it: user 10001 on a read-only root, the HEALTHCHECK kept and SERVING, a rerank over gRPC
# and over HTTP through the published ports, and exit 0 on SIGTERM.
#
# Usage (root): deploy/container/check.sh [--no-build]   (--no-build: IMAGE is built already)
# Environment: PYTHON (a Python with edgerank installed, for the gRPC client; default
# .venv/bin/python), GRPC_PORT / HTTP_PORT (58051 / 58080 on 127.0.0.1), and up.sh's.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
cd "$SRC"
PYTHON=${PYTHON:-$SRC/.venv/bin/python}
export NAME=${NAME:-edgerank-check} BIND=127.0.0.1
export GRPC_PORT=${GRPC_PORT:-58051} HTTP_PORT=${HTTP_PORT:-58080}
say() { echo "== $* ($(date -u +%H:%M:%S))" >&2; }

. "$SRC/deploy/container/sandbox.sh"
trap '$PODMAN rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
deploy/container/up.sh ${1:-}

echo "USER $($PODMAN exec "$NAME" id -u)"
echo "READ_ONLY $($PODMAN inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$NAME")"
echo "HEALTH $($PODMAN healthcheck run "$NAME" >/dev/null && echo healthy || echo unhealthy)"

QUERY="how do I reset my router password"
D1="The city council approved the new budget for road repairs on Tuesday."
D2="To reset the router password, hold the reset button for ten seconds and log in with the default credentials printed on the label."
D3="Bananas are rich in potassium and make a quick breakfast."
say "rerank over gRPC (edgerank score --server 127.0.0.1:$GRPC_PORT)"
echo "GRPC $("$PYTHON" -m edgerank score --server "127.0.0.1:$GRPC_PORT" --json "$QUERY" "$D1" "$D2" "$D3")"
say "rerank over HTTP (POST /v2/rerank)"
body=$("$PYTHON" -c 'import json,sys; print(json.dumps({"query": sys.argv[1], "documents": sys.argv[2:]}))' "$QUERY" "$D1" "$D2" "$D3")
echo "HTTP $(curl -sS -X POST -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$HTTP_PORT/v2/rerank")"

say "SIGTERM"
$PODMAN kill --signal TERM "$NAME" >/dev/null
echo "EXIT_CODE $($PODMAN wait "$NAME")"
$PODMAN logs "$NAME" 2>&1 | tail -n 5 | sed 's/^/LOG /'
