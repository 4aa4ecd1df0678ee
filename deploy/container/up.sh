#!/usr/bin/env bash
# Build the edgerank image and run it, from nothing, on a box that reaches Debian's mirror and
# PyPI but no container registry: the base from Debian packages (build-base.sh), the image
# from the Containerfile in Docker format (OCI drops HEALTHCHECK), then `podman run` with a
# read-only root, no capabilities, the ports on 127.0.0.1, and a wait until it is SERVING.
#
# Usage (root): deploy/container/up.sh [--build-only | --no-build]
# Environment:
#   IMAGE (localhost/edgerank:latest), NAME (edgerank: the container), BIND (127.0.0.1),
#   GRPC_PORT (50051), HTTP_PORT (8080): where the ports are published;
#   BASE: a base image to use instead of the Debian one (docker.io/library/python:3.12-slim
#   where a registry is reachable); MODEL / MODEL_ARCHIVE / EXTRAS: the Containerfile's
#   build arguments; PIP_CERT: the CA bundle of a TLS-intercepting proxy, when this box's
#   pip is not configured with it (found otherwise; see below); PODMAN, LIMITS: sandbox.sh.
# Prints IMAGE_SIZE, the phases' seconds, and how to call the daemon.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
cd "$SRC"
MODE=${1:-}
IMAGE=${IMAGE:-localhost/edgerank:latest}
NAME=${NAME:-edgerank}
BIND=${BIND:-127.0.0.1}
GRPC_PORT=${GRPC_PORT:-50051}
HTTP_PORT=${HTTP_PORT:-8080}
say() { echo "== $* ($(date -u +%H:%M:%S))" >&2; }
t0=$(date +%s)
phase() { echo "$1_SECONDS $(( $(date +%s) - $2 ))"; }

[ "$(id -u)" = 0 ] || { echo "up.sh: needs root (debootstrap, podman)" >&2; exit 2; }
missing=()
command -v podman >/dev/null || missing+=(podman)
[ -n "${BASE:-}" ] || command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >&2
fi
# shellcheck source=deploy/container/sandbox.sh
. "$SRC/deploy/container/sandbox.sh"
echo "PODMAN $PODMAN"
echo "LIMITS ${LIMITS:-none}"

if [ "$MODE" != --no-build ]; then
  start=$(date +%s)
  if [ -z "${BASE:-}" ]; then
    BASE=localhost/edgerank-base:bookworm
    if ! $PODMAN image exists "$BASE"; then
      say "building the base from Debian packages ($BASE)"
      PODMAN="$PODMAN" deploy/container/build-base.sh "$BASE" >/dev/null
    fi
  fi
  phase BASE "$start"

  # A TLS-intercepting proxy shows as a certificate the base's public CAs reject. pip in the
  # build then gets the bundle this box's pip trusts (PIP_CERT, else pip's own `cert`
  # setting, else the system bundle) as a build secret, never baked into a layer.
  secret=()
  if ! out=$($PODMAN run --rm $LIMITS --network=host "$BASE" python3 -c \
      'import urllib.request; urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=60)' 2>&1); then
    if ! grep -q CERTIFICATE_VERIFY_FAILED <<<"$out"; then
      echo "up.sh: the base cannot reach https://pypi.org: $(tail -n 1 <<<"$out")" >&2
      exit 1
    fi
    ca=${PIP_CERT:-}
    [ -n "$ca" ] || ca=$(python3 -m pip config get global.cert 2>/dev/null || true)
    for c in "$ca" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
      if [ -n "$c" ] && [ -f "$c" ]; then ca=$c; break; fi
    done
    [ -f "$ca" ] || { echo "up.sh: pypi.org's certificate is not trusted by public CAs (a TLS-intercepting proxy?) and no CA bundle was found: set PIP_CERT=/path/to/proxy-ca.pem" >&2; exit 1; }
    say "TLS interception on the way to PyPI: the build's pip trusts $ca"
    echo "PIP_CA $ca"
    secret=(--secret "id=pip_ca,src=$ca")
  fi

  start=$(date +%s)
  say "podman build --format docker -t $IMAGE (BASE=$BASE)"
  # host network: pip reaches PyPI as this box does
  $PODMAN build $LIMITS --network=host --format docker -f Containerfile "${secret[@]}" \
    --build-arg BASE="$BASE" ${MODEL:+--build-arg MODEL="$MODEL"} \
    ${MODEL_ARCHIVE:+--build-arg MODEL_ARCHIVE="$MODEL_ARCHIVE"} \
    ${EXTRAS:+--build-arg EXTRAS="$EXTRAS"} -t "$IMAGE" . >&2
  phase BUILD "$start"
  echo "IMAGE_SIZE $($PODMAN image inspect --format '{{.Size}}' "$IMAGE")"
  echo "HEALTHCHECK $($PODMAN image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE")"
fi
[ "$MODE" = --build-only ] && { phase TOTAL "$t0"; exit 0; }

start=$(date +%s)
say "podman run --read-only $IMAGE as $NAME on $BIND:$GRPC_PORT (gRPC), $BIND:$HTTP_PORT (HTTP)"
$PODMAN rm -f "$NAME" >/dev/null 2>&1 || true
$PODMAN run -d --name "$NAME" $LIMITS --read-only --cap-drop=ALL \
  --security-opt=no-new-privileges \
  -p "$BIND:$GRPC_PORT:50051" -p "$BIND:$HTTP_PORT:8080" "$IMAGE" >/dev/null
# the image's HEALTHCHECK (grpc.health.v1), run on demand: a host without systemd has no
# timer for podman to run it on its own
for _ in $(seq 1 1200); do
  if $PODMAN healthcheck run "$NAME" >/dev/null 2>&1; then break; fi
  if [ "$($PODMAN inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
    $PODMAN logs "$NAME" >&2 || true
    echo "up.sh: the container exited ($($PODMAN inspect --format '{{.State.ExitCode}}' "$NAME"))" >&2
    exit 1
  fi
  sleep 0.5
done
$PODMAN healthcheck run "$NAME" >/dev/null || { echo "up.sh: not healthy after 10 min" >&2; exit 1; }
phase RUN "$start"
phase TOTAL "$t0"
cat <<EOF
SERVING $NAME
  edgerank score --server $BIND:$GRPC_PORT "query" "doc 1" "doc 2"
  curl -s $BIND:$HTTP_PORT/v2/rerank -H 'Content-Type: application/json' -d '{"query": "q", "documents": ["a", "b"]}'
  podman logs $NAME; podman stop $NAME   # SIGTERM: drains, exits 0
EOF
