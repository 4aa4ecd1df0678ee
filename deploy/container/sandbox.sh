# Sourced by the deploy scripts: the podman flags this box needs, found out, not assumed.
#
#   PODMAN  podman, plus `--runtime runc` where crun cannot run: crun refuses a hybrid
#           cgroup layout that has a controller on the v2 side ("cgroups in hybrid mode not
#           supported, drop all controllers from cgroupv2"); runc runs it. Storage is left to
#           podman's own configuration: forcing a driver fails with "database graph driver
#           mismatch" once podman has used another one.
#   LIMITS  --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 (or the hard limit, where it
#           is lower) when this process lacks CAP_SYS_RESOURCE: podman raises both by
#           default, and the runtime then fails ("setrlimit RLIMIT_NOFILE: Operation not
#           permitted"). Not the hard limits themselves: in one such sandbox runc was refused
#           an nproc of 40000 under a hard limit of 96367, and 4096 is ample for the daemon.
#
# Each is kept when the caller set it. Needs root; installs runc with apt when it is needed
# and missing.

_cap_sys_resource() {
  local eff
  eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
  (( (16#$eff >> 24) & 1 ))
}

_needs_runc() {
  # cgroup v1 or hybrid, with at least one controller bound to the v2 side
  [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] &&
    [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]
}

if [ -z "${PODMAN:-}" ]; then
  PODMAN=podman
  if _needs_runc; then
    if ! command -v runc >/dev/null; then
      echo "== hybrid cgroups with a v2 controller: crun cannot run here; installing runc" >&2
      (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runc ||
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runc)) >&2 ||
        { echo "sandbox.sh: crun cannot run on this cgroup layout and runc could not be installed" >&2; exit 2; }
    fi
    PODMAN="podman --runtime runc"
  fi
fi

if [ -z "${LIMITS+set}" ]; then
  LIMITS=""
  if ! _cap_sys_resource; then
    for _limit in "nofile $(ulimit -Hn)" "nproc $(ulimit -Hu)"; do
      read -r _name _value <<<"$_limit"
      if [ "$_value" = unlimited ] || [ "$_value" -gt 4096 ]; then _value=4096; fi
      LIMITS="$LIMITS --ulimit $_name=$_value:$_value"
    done
  fi
fi
