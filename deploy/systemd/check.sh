#!/usr/bin/env bash
# systemd/edgerank.service under a real systemd as PID 1: a Debian bookworm system booted in
# a container (podman --systemd=always), edgerank installed as the README's systemd section
# says (the venv at /opt/edgerank, the unit, /etc/edgerank), then, step by step:
#   start    `systemctl start` returns once READY=1 came: active at once, the socket in
#            RuntimeDirectory answers a rerank on the first try
#   store    DynamicUser owns the StateDirectory (the model store), root's files in it too
#   memory   MemoryMax= from `edgerank models --json` (deploy/k8s/resources.py --systemd)
#            is the cgroup's limit and holds the peak of steady traffic
#   security `systemd-analyze security edgerank` in the booted system
#   reload   (the unit's ExecReload, SIGHUP) with requests in flight: none lost, same PID,
#            RELOADING=1 then READY=1, the new token file in force
#   watchdog SIGSTOP on the daemon: systemd kills it when WatchdogSec runs out and restarts it
#   stop     with requests in flight: none lost, a clean exit (no SIGKILL) within TimeoutStopSec
#   oom      MemoryMax= below what the daemon needs: the kernel kills it (the limit is enforced)
# Each step prints its lines and its seconds; a failed check prints FAIL and the script goes
# on, exiting 1 at the end. tests/deploy/test_systemd.py runs it and reads the lines.
#
# Usage (root): deploy/systemd/check.sh [--no-build]  (--no-build: IMAGE exists already)
# Environment: IMAGE (the edgerank image, built by deploy/container/up.sh when missing or
# without --no-build), KEEP=1 leaves the container running; PODMAN, LIMITS: sandbox.sh.
set -uo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
cd "$SRC"
IMAGE=${IMAGE:-localhost/edgerank:latest}
SD_IMAGE=localhost/edgerank-systemd:check
C=edgerank-systemd-check
SOCK=/run/edgerank/edgerank.sock
T=/usr/local/lib/edgerank-check
. "$SRC/deploy/container/sandbox.sh"

failed=0
fail() { echo "FAIL $*"; failed=1; }
say() { echo "== $* ($(date -u +%H:%M:%S))" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
in_c() { $PODMAN exec -i "$C" "$@"; }
prop() { in_c systemctl show -p "$1" --value edgerank; }
# poll CMD until it succeeds: a hang guard of GUARD seconds, not a timing assertion
until_ok() { local guard=$1; shift; local end=$(( $(date +%s) + guard ))
  until "$@" >/dev/null 2>&1; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 1; done; }
journal_since() { in_c journalctl -u edgerank --since "@${1%.*}" -o short-unix --no-pager; }
count_lines() { in_c sh -c "wc -l < $1 2>/dev/null || echo 0"; }
QUERY="how do I reset my router password"
D1="The city council approved the new budget for road repairs on Tuesday."
D2="To reset the router password, hold the reset button for ten seconds and log in with the default credentials printed on the label."
D3="Bananas are rich in potassium and make a quick breakfast."
# rerank SERVER [TOKEN]
rerank() { in_c env EDGERANK_TOKEN="${2:-}" edgerank score --server "$1" --json "$QUERY" "$D1" "$D2" "$D3"; }
first_is_router() { python3 -c 'import json,sys; r=json.load(sys.stdin); r=r.get("results", r); sys.exit(0 if r[0]["index"] == 1 else 1)'; }

if [ "${1:-}" != --no-build ] || ! $PODMAN image exists "$IMAGE"; then
  IMAGE="$IMAGE" deploy/container/up.sh --build-only >/dev/null || { echo "FAIL image build"; exit 1; }
fi
say "building $SD_IMAGE (systemd + the unit on $IMAGE)"
start=$(now)
$PODMAN build $LIMITS --network=host --format docker -f deploy/systemd/Containerfile \
  --build-arg IMAGE="$IMAGE" -t "$SD_IMAGE" . >&2 || { echo "FAIL systemd image build"; exit 1; }
echo "IMAGE_SECONDS $(secs "$start" "$(now)")"

# --privileged: the unit's sandboxing needs mount namespaces (CAP_SYS_ADMIN) and systemd
# needs the cgroup hierarchies writable; --cgroupns=private makes /proc/PID/cgroup match
# the mounted hierarchies, so systemd can place the unit's memory cgroup (MemoryMax=).
# --network=none: the daemon is reached through its socket and the container's loopback.
$PODMAN rm -f "$C" >/dev/null 2>&1 || true
[ -n "${KEEP:-}" ] || trap '$PODMAN rm -f "$C" >/dev/null 2>&1 || true' EXIT
say "booting $C (systemd as PID 1)"
start=$(now)
$PODMAN run -d --name "$C" $LIMITS --privileged --cgroupns=private --systemd=always \
  --network=none "$SD_IMAGE" >/dev/null || { echo "FAIL podman run --systemd=always"; exit 1; }
until_ok 300 in_c systemctl is-system-running --wait || true
echo "BOOT $(in_c systemctl is-system-running) $(secs "$start" "$(now)")s; PID 1 is $(in_c cat /proc/1/comm); $(in_c systemctl --version | head -n 1)"

# --- configure: a clients' group (the unit's note), the token file, MemoryMax= -----------
say "configuring (clients' group, token file, MemoryMax from edgerank models --json)"
in_c sh -c 'groupadd --system edgerank-clients && useradd -G edgerank-clients alice &&
  useradd bob && umask 027 && echo token-one > /etc/edgerank/token &&
  chgrp edgerank-clients /etc/edgerank/token'
# root's files in the store before the first start (as `EDGERANK_HOME=... edgerank pull`)
in_c sh -c 'mkdir -p /var/lib/edgerank/models && echo "put here by root" > /var/lib/edgerank/models/NOTE'
probe=$(in_c edgerank probe --json)
read -r model precision budget < <(python3 -c 'import json,sys; c=json.load(sys.stdin)["choice"]
print(c["model"], c["precision"], c["batch_token_budget"])' <<<"$probe")
memline=$(in_c python3 $T/resources.py "$model" --precision "$precision" \
  --max-batch-tokens "$budget" --systemd --edgerank /opt/edgerank/bin/edgerank)
echo "MEMORY_SIZING $model $precision, $budget tokens: $(tr '\n' ' ' <<<"$memline")"
in_c sh -c "mkdir -p /etc/systemd/system/edgerank.service.d && cat > /etc/systemd/system/edgerank.service.d/local.conf" <<EOF
[Service]
# deploy/k8s/resources.py $model --precision $precision --max-batch-tokens $budget --systemd
$(grep '^MemoryMax=' <<<"$memline")
Environment=EDGERANK_MAX_BATCH_TOKENS=$budget EDGERANK_TOKEN_FILE=/etc/edgerank/token
Group=edgerank-clients
EOF
in_c systemctl daemon-reload
in_c systemctl enable edgerank 2>&1 | sed 's/^/ENABLE /'
echo "ENABLED $(in_c systemctl is-enabled edgerank)"

# --- start ----------------------------------------------------------------------------
say "systemctl start edgerank"
start=$(now)
in_c timeout 600 systemctl start edgerank || fail "systemctl start returned $?"
end=$(now)
# asked at once: Type=notify is active only after READY=1
echo "START $(secs "$start" "$end")s; $(prop ActiveState)/$(prop SubState); status: $(prop StatusText)"
[ "$(prop ActiveState)" = active ] || fail "not active right after systemctl start"
out=$(rerank "unix:$SOCK") || fail "rerank over $SOCK"
echo "RERANK unix:$SOCK $out"
first_is_router <<<"$out" || fail "the router document is not first"
in_c journalctl -u edgerank -o short-monotonic --no-pager | grep -E 'Starting|serving|Started' | sed 's/^/JOURNAL /'

# --- the store and the socket ---------------------------------------------------------
pid=$(prop MainPID)
uid=$(in_c awk '/^Uid:/ {print $2}' "/proc/$pid/status")
echo "DAEMON pid $pid uid $uid ($(in_c getent passwd "$uid" | cut -d: -f1)) gid $(in_c awk '/^Gid:/ {print $2}' "/proc/$pid/status")"
in_c stat -c 'STORE %u:%g %a %N' /var/lib/edgerank /var/lib/private/edgerank /var/lib/private/edgerank/models/NOTE
in_c stat -c 'SOCKET %u:%g %a %n' "$SOCK"
[ "$(in_c stat -c %u /var/lib/private/edgerank/models/NOTE)" = "$uid" ] || fail "the store is not the daemon's"
as_user() { in_c runuser -u "$1" -- env HOME=/tmp edgerank score --server "unix:$SOCK" "$QUERY" "$D1" >/dev/null 2>&1 && echo ok || echo refused; }
echo "SOCKET_ACCESS alice (in edgerank-clients): $(as_user alice); bob: $(as_user bob)"

# --- memory ---------------------------------------------------------------------------
traffic() { # $1: name; the rest: traffic.py run options
  local n=$1; shift
  in_c rm -f "/tmp/$n.jsonl" "/tmp/$n.until" "/tmp/$n.mark"
  in_c sh -c "nohup python3 $T/traffic.py run unix:$SOCK --out /tmp/$n.jsonl $* >/tmp/$n.log 2>&1 &"
  until_ok 300 in_c test -s "/tmp/$n.jsonl" || fail "$n: no call came back"
}
traffic_done() { ! in_c pgrep -f "traffic.py run unix:$SOCK --out /tmp/$1.jsonl" >/dev/null; }
cg=$(in_c awk -F: '$2 == "memory" {print $3}' "/proc/$pid/cgroup")
limit=$(in_c cat "/sys/fs/cgroup/memory$cg/memory.limit_in_bytes")
echo "MEMORY MemoryMax=$(prop MemoryMax) cgroup $cg limit_in_bytes=$limit"
[ "$limit" = "$(prop MemoryMax)" ] || fail "the cgroup's limit is not MemoryMax"
traffic burst --clients 4 --docs 64 --max-calls 8
until_ok 900 traffic_done burst || fail "burst traffic did not end"
peak=$(in_c cat "/sys/fs/cgroup/memory$cg/memory.max_usage_in_bytes")
echo "MEMORY_PEAK $(( peak >> 20 )) MiB of $(( limit >> 20 )) MiB after $(in_c python3 $T/traffic.py summary /tmp/burst.jsonl)"
[ "$peak" -lt "$limit" ] || fail "the peak reached MemoryMax"

# --- hardening ------------------------------------------------------------------------
in_c systemd-analyze security edgerank --no-pager | tail -n 1 | sed 's/^/SECURITY /'

# --- reload with requests in flight --------------------------------------------------
token_call() { rerank 127.0.0.1:50051 "$1" >/dev/null 2>&1 && echo ok || echo refused; }
if [ -n "$(prop ExecReload)" ]; then
  say "systemctl reload edgerank with requests in flight"
  echo "TOKEN_BEFORE token-one: $(token_call token-one), token-two: $(token_call token-two)"
  traffic reload --clients 4 --until /tmp/reload.until
  in_c sh -c 'echo token-two > /etc/edgerank/token'
  in_c systemd-analyze log-level debug
  before=$(count_lines /tmp/reload.jsonl)
  mark=$(now); in_c sh -c "echo $mark > /tmp/reload.mark"
  in_c timeout 300 systemctl reload edgerank || fail "systemctl reload returned $?"
  end=$(now)
  echo "RELOAD $(secs "$mark" "$end")s; $(prop ActiveState); pid $pid -> $(prop MainPID); restarts $(prop NRestarts)"
  # traffic goes on after the reload, then stops
  more_calls() { [ "$(count_lines /tmp/reload.jsonl)" -ge "$1" ]; }
  until_ok 300 more_calls $(( before + 8 )) || fail "no traffic after the reload"
  in_c touch /tmp/reload.until
  until_ok 600 traffic_done reload || fail "reload traffic did not stop"
  in_c systemd-analyze log-level info
  echo "RELOAD_TRAFFIC $(in_c python3 $T/traffic.py summary /tmp/reload.jsonl --mark /tmp/reload.mark)"
  journal_since "$mark" | grep -E 'notification message.*(RELOADING=1|READY=1)|Reloading|Reloaded|SIGHUP' | sed 's/^/JOURNAL /'
  echo "TOKEN_AFTER token-one: $(token_call token-one), token-two: $(token_call token-two)"
  [ "$(prop MainPID)" = "$pid" ] || fail "reload changed the main PID"
else
  echo "RELOAD unsupported: the unit has no ExecReload= (the SIGHUP contract is not merged)"
  fail "reload"
fi

# --- watchdog -------------------------------------------------------------------------
say "watchdog: SIGSTOP on the daemon (WatchdogSec=$(prop WatchdogUSec))"
pid=$(prop MainPID); restarts=$(prop NRestarts)
mark=$(now)
restarted() { [ "$(prop NRestarts)" -gt "$restarts" ] && [ "$(prop ActiveState)" = active ] &&
  [ "$(prop MainPID)" != "$pid" ] && [ "$(prop MainPID)" != 0 ]; }
if [ "$pid" != 0 ] && in_c kill -STOP "$pid"; then
  until_ok 900 restarted || fail "no watchdog restart"
  end=$(now)
  fired=$(journal_since "$mark" | awk '/Watchdog timeout/ {print $1; exit}')
  echo "WATCHDOG restarted $(secs "$mark" "$end")s after SIGSTOP; timeout fired after $(secs "$mark" "${fired:-$mark}")s; pid $pid -> $(prop MainPID); restarts $restarts -> $(prop NRestarts)"
  journal_since "$mark" | grep -E 'Watchdog|Killing|Main process exited|Failed with result|Scheduled restart|Started' | sed 's/^/JOURNAL /'
  out=$(rerank "unix:$SOCK") && echo "RERANK_AFTER_RESTART ok" || fail "rerank after the watchdog restart"
else
  fail "SIGSTOP"
fi

# --- stop with requests in flight -------------------------------------------------------
say "systemctl stop edgerank with requests in flight"
traffic stop --clients 4 --until-error
mark=$(now); in_c sh -c "echo $mark > /tmp/stop.mark"
in_c timeout 600 systemctl stop edgerank || fail "systemctl stop returned $?"
end=$(now)
until_ok 600 traffic_done stop || fail "stop traffic did not end"
echo "STOP $(secs "$mark" "$end")s (TimeoutStopSec=$(prop TimeoutStopUSec)); result $(prop Result), exit $(prop ExecMainCode)/$(prop ExecMainStatus)"
echo "STOP_TRAFFIC $(in_c python3 $T/traffic.py summary /tmp/stop.jsonl --mark /tmp/stop.mark)"
journal_since "$mark" | grep -E 'Stopping|SIGTERM|drain timeout|stopped after|Deactivated|Stopped|timed out|Killing' | sed 's/^/JOURNAL /'

# --- MemoryMax enforced -----------------------------------------------------------------
say "MemoryMax enforced: a 900 MiB allocation in the unit's cgroup; the daemon under 48M"
in_c timeout 600 systemctl start edgerank || fail "start after stop"
cg=$(in_c awk -F: '$2 == "memory" {print $3}' "/proc/$(prop MainPID)/cgroup")
in_c sh -c "echo \$\$ > /sys/fs/cgroup/memory$cg/cgroup.procs && exec python3 -c 'x = b\"1\" * (900 << 20)'"
rc=$?
echo "OOM_HOG exit $rc in $cg (MemoryMax=$(prop MemoryMax)); failcnt $(in_c cat "/sys/fs/cgroup/memory$cg/memory.failcnt"); daemon $(prop ActiveState), pid $(prop MainPID)"
[ "$rc" = 137 ] || fail "a 900 MiB allocation in the unit's cgroup was not OOM-killed"
mark=$(now)
in_c systemctl stop edgerank
in_c systemctl set-property --runtime edgerank MemoryMax=48M
in_c timeout 600 systemctl start edgerank >/dev/null 2>&1 && fail "started under MemoryMax=48M"
echo "OOM_SMALL MemoryMax=48M: $(prop Result)"
journal_since "$mark" | grep -E 'budget|Failed with result' | head -n 2 | sed 's/^/JOURNAL /'
in_c systemctl stop edgerank
in_c sh -c 'rm -rf /run/systemd/system.control/edgerank.service.d && systemctl daemon-reload && systemctl reset-failed edgerank'
in_c timeout 600 systemctl start edgerank || fail "restart after the memory checks (rc $?)"
echo "RESTORED $(prop ActiveState) MemoryMax=$(prop MemoryMax)"

echo "DONE failed=$failed"
exit "$failed"
