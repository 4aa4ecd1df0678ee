#!/usr/bin/env bash
# deploy/k8s/base, run: rendered with `kubectl kustomize` (through deploy/k8s/podman, which
# publishes the ports on 127.0.0.1 and keeps one replica), played with `podman kube play`
# on the image the Containerfile builds, then:
#   serve    a rerank over gRPC and HTTP through the published ports
#   probes   what the kubelet's gRPC probes ask (grpc.health.v1 Check on the pod's port, with
#            each probe's service) answered SERVING; and what podman kept of the spec
#   down     `podman kube down` with requests in flight: what podman 4.3 does (shown), and
#            the kubelet's order (preStop, SIGTERM with the grace period, the pod's network
#            last) then `kube down`: none lost
# Each step prints its lines and seconds; a failed check prints FAIL, and the script exits 1
# at the end. tests/deploy/test_kube_play.py runs it and reads the lines.
#
# Usage (root): deploy/k8s/play.sh [--no-build]   (--no-build: the image is built already)
# Environment: PYTHON (a Python with edgerank installed, for the clients; default
# .venv/bin/python); PODMAN, LIMITS: deploy/container/sandbox.sh.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
cd "$SRC"
PYTHON=${PYTHON:-$SRC/.venv/bin/python}
IMAGE=localhost/edgerank:latest   # the name deploy/k8s/base gives the image
GRPC=127.0.0.1:58151
HTTP=127.0.0.1:58180
. "$SRC/deploy/container/sandbox.sh"

failed=0
fail() { echo "FAIL $*"; failed=1; }
say() { echo "== $* ($(date -u +%H:%M:%S))" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
until_ok() { local guard=$1; shift; local end=$(( $(date +%s) + guard ))
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 1; done; }

if [ "${1:-}" != --no-build ] || ! $PODMAN image exists "$IMAGE"; then
  IMAGE="$IMAGE" deploy/container/up.sh --build-only >/dev/null || { echo "FAIL image build"; exit 1; }
fi
# a pod's infra container is built from catatonit
if ! command -v catatonit >/dev/null && [ ! -x /usr/libexec/podman/catatonit ]; then
  say "installing catatonit (podman's pod infra)"
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends catatonit ||
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends catatonit)) >&2
fi
WORK=$(mktemp -d)
# `kube play` takes no --ulimit: the same limits go in through a containers.conf
if [ -n "$LIMITS" ]; then
  conf=/etc/containers/containers.conf
  [ -f "$conf" ] || conf=/usr/share/containers/containers.conf
  ulimits=""
  for u in $LIMITS; do [ "$u" = --ulimit ] || ulimits="${ulimits:+$ulimits, }\"$u\""; done
  { [ -f "$conf" ] && grep -q '^\[containers\]' "$conf" &&
      sed "/^\[containers\]/a default_ulimits = [${ulimits}]" "$conf" ||
      printf '[containers]\ndefault_ulimits = [%s]\n' "$ulimits"; } > "$WORK/containers.conf"
  export CONTAINERS_CONF=$WORK/containers.conf
fi
PLAY=$WORK/play.yaml
cleanup() { $PODMAN kube down "$PLAY" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] && echo "KEPT_FILES $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT

say "kubectl kustomize deploy/k8s/podman (base + published ports)"
kubectl kustomize deploy/k8s/podman > "$PLAY" || { echo "FAIL kubectl kustomize"; exit 1; }
echo "RENDERED $(grep -E '^kind:' "$PLAY" | awk '{print $2}' | tr '\n' ' ')"
$PODMAN kube down "$PLAY" >/dev/null 2>&1 || true

say "podman kube play"
start=$(now)
$PODMAN kube play "$PLAY" 2>&1 | sed 's/^/PLAY /' || fail "podman kube play"
echo "PLAY_SECONDS $(secs "$start" "$(now)")"
$PODMAN pod ps --format 'POD {{.Name}} {{.Status}} containers={{.NumberOfContainers}}'
C=$($PODMAN ps --filter label=app.kubernetes.io/name=edgerank --format '{{.Names}}' | head -n 1)
[ -n "$C" ] || C=edgerank-pod-0-edgerank
$PODMAN inspect "$C" --format 'KEPT user={{.Config.User}} read_only={{.HostConfig.ReadonlyRootfs}} memory_limit={{.HostConfig.Memory}} cap_add={{.EffectiveCaps}} no_new_privileges={{.HostConfig.SecurityOpt}} stop_timeout={{.Config.StopTimeout}}s healthcheck={{json .Config.Healthcheck}}'

serving() { $PODMAN exec "$C" /opt/edgerank/bin/python /opt/edgerank/healthcheck.py edgerank.v1.Reranker; }
until_ok 600 serving || fail "the pod never reported SERVING"
echo "READY_SECONDS $(secs "$start" "$(now)")"

# --- serve through the published ports ------------------------------------------------
QUERY="how do I reset my router password"
D1="The city council approved the new budget for road repairs on Tuesday."
D2="To reset the router password, hold the reset button for ten seconds and log in with the default credentials printed on the label."
D3="Bananas are rich in potassium and make a quick breakfast."
out=$("$PYTHON" -m edgerank score --server "$GRPC" --json "$QUERY" "$D1" "$D2" "$D3") || fail "rerank over $GRPC"
echo "RERANK_GRPC $GRPC $out"
"$PYTHON" -c 'import json,sys; sys.exit(json.load(sys.stdin)["results"][0]["index"] != 1)' <<<"$out" ||
  fail "the router document is not first"
body=$("$PYTHON" -c 'import json,sys; print(json.dumps({"query": sys.argv[1], "documents": sys.argv[2:]}))' "$QUERY" "$D1" "$D2" "$D3")
echo "RERANK_HTTP $HTTP $(curl -sS -X POST -H 'Content-Type: application/json' -d "$body" "http://$HTTP/v2/rerank")"

# --- the probes, as the kubelet runs them: grpc.health.v1 Check on the pod's own port ----
for probe in startupProbe readinessProbe livenessProbe; do
  service=$("$PYTHON" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"]
print(docs[0]["spec"]["template"]["spec"]["containers"][0][sys.argv[2]]["grpc"].get("service", ""))' "$PLAY" "$probe")
  answer=$($PODMAN exec "$C" /opt/edgerank/bin/python /opt/edgerank/healthcheck.py "$service" 2>&1)
  echo "PROBE $probe service=${service:-(server)} -> $answer"
  [ "$answer" = SERVING ] || fail "$probe"
done

# --- taking the pod down with requests in flight -----------------------------------------
# down_with_traffic NAME CALL_TIMEOUT COMMAND...: steady traffic through the published port,
# then COMMAND once a call came back; prints NAME_SECONDS, NAME_TRAFFIC and the pod's log
down_with_traffic() {
  local name=$1 timeout=$2; shift 2
  $PODMAN logs -f "$C" > "$WORK/$name.log" 2>&1 &
  local logs=$!
  "$PYTHON" deploy/traffic.py run "$GRPC" --out "$WORK/$name.jsonl" --clients 4 \
    --until-error --call-timeout "$timeout" &
  local traffic=$!
  until_ok 300 test -s "$WORK/$name.jsonl" || fail "$name: no call came back"
  local mark; mark=$(now); echo "$mark" > "$WORK/$name.mark"
  "$@" 2>&1 | sed "s/^/${name^^} /"
  echo "${name^^}_SECONDS $(secs "$mark" "$(now)")"
  wait "$traffic" || fail "$name: traffic.py"
  wait "$logs" 2>/dev/null || true
  echo "${name^^}_TRAFFIC $("$PYTHON" deploy/traffic.py summary "$WORK/$name.jsonl" --mark "$WORK/$name.mark")"
  grep -E 'SIGTERM|drain timeout|stopped after' "$WORK/$name.log" | sed "s/^/${name^^}_LOG /"
}
# podman 4.3's `kube down` (and `pod stop`) stops the pod's infra container, and with it the
# published port's forwarding, at once: the daemon drains its calls and exits 0, but the
# answers have no way back and the clients wait out their deadline (30 s here). Shown, not
# asserted: it is podman's order, not the daemon's.
say "podman kube down with requests in flight"
down_with_traffic down 30 $PODMAN kube down "$PLAY"
echo "LEFT $($PODMAN pod ps -q | wc -l) pods"

# The kubelet's order: preStop, SIGTERM to the app containers with the grace period, and the
# pod's sandbox (its network) last; the same with podman, then `kube down`.
say "podman kube play again; preStop, podman stop -t GRACE, then podman kube down"
$PODMAN kube play "$PLAY" >/dev/null 2>&1 || fail "podman kube play (again)"
C=$($PODMAN ps --filter label=app.kubernetes.io/name=edgerank --format '{{.Names}}' | head -n 1)
[ -n "$C" ] || C=edgerank-pod-0-edgerank
until_ok 600 serving || fail "the pod never reported SERVING (again)"
read -r grace prestop < <("$PYTHON" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"]
spec = docs[0]["spec"]["template"]["spec"]
print(spec["terminationGracePeriodSeconds"], " ".join(spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]))' "$PLAY")
kubelet_down() { $PODMAN exec "$C" $prestop && $PODMAN stop -t "$grace" "$C" >/dev/null &&
  echo "app exited $($PODMAN inspect --format '{{.State.ExitCode}}' "$C")" && $PODMAN kube down "$PLAY"; }
down_with_traffic drained 300 kubelet_down
echo "LEFT $($PODMAN pod ps -q | wc -l) pods"

echo "DONE failed=$failed"
exit "$failed"
