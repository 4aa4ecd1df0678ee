#!/usr/bin/env bash
# edgerank on arm64, emulated: a Debian bookworm arm64 root (debootstrap --foreign, finished
# under qemu-user-static), the serving-only install of THIS checkout in a venv there, then
# `edgerank probe --explain` and `edgerank score` with the embedded offline model.
#
# Needs root, debootstrap, qemu-user-static and network to the Debian mirror and PyPI
# (behind a TLS-intercepting proxy, PIP_CERT names its CA bundle, as for pip itself).
# Usage: sudo deploy/arm64/check.sh [ROOT]   (ROOT defaults to /var/tmp/edgerank-arm64; a
# finished root is reused, so a second run costs only the install and the two commands)
# Prints the lines the pytest wrapper (tests/deploy/test_arm64.py) checks:
#   ARCH <uname -m>, the probe output, the score output, INSTALL_SIZE <du -sh of the venv>.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
ROOT=${1:-${EDGERANK_ARM64_ROOT:-/var/tmp/edgerank-arm64}}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}

say() { echo "== $* ($(date -u +%H:%M:%S))" >&2; }

[ "$(id -u)" = 0 ] || { echo "check.sh: needs root (debootstrap, chroot, binfmt)" >&2; exit 2; }
for tool in debootstrap chroot; do
  command -v "$tool" >/dev/null || { echo "check.sh: $tool is missing" >&2; exit 2; }
done
[ -x /usr/bin/qemu-aarch64-static ] || { echo "check.sh: qemu-user-static is missing" >&2; exit 2; }

# binfmt_misc: without it the kernel cannot exec an aarch64 ELF. Debian registers it through
# systemd-binfmt; containers and CI runners without systemd need it done by hand. The F flag
# (in Debian's file) opens the interpreter now, so it works inside the chroot too.
BINFMT=/proc/sys/fs/binfmt_misc
if [ "$(uname -m)" != aarch64 ] && [ ! -e "$BINFMT/qemu-aarch64" ]; then
  [ -e "$BINFMT/register" ] || mount -t binfmt_misc binfmt_misc "$BINFMT"
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -f "$conf" ] || { echo "check.sh: $conf missing (qemu-user-static)" >&2; exit 2; }
  grep -v '^#' "$conf" | sed 's#/usr/libexec/qemu-binfmt/aarch64-binfmt-P#/usr/bin/qemu-aarch64-static#; s/:OPF$/:F/' \
    > "$BINFMT/register"
  say "registered qemu-aarch64 with binfmt_misc"
fi

if [ ! -x "$ROOT/usr/bin/python3" ] || [ ! -e "$ROOT/.edgerank-root-done" ]; then
  say "debootstrap --foreign arm64 $SUITE into $ROOT"
  rm -rf "$ROOT"
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOT" "$MIRROR" >&2
  say "second stage under qemu"
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >&2
  touch "$ROOT/.edgerank-root-done"
fi

cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mounted=()
cleanup() { for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done; }
trap cleanup EXIT
# /proc only. qemu-user (7.2) shows the x86 host's /proc/cpuinfo, and onnxruntime's cpuinfo
# library segfaults on that plus the host's /sys CPU lists; without /sys it warns and MLAS
# reads the features from the auxiliary vector, as edgerank's probe does (hwcaps).
if ! mountpoint -q "$ROOT/proc"; then
  mount -t proc proc "$ROOT/proc"
  mounted+=("$ROOT/proc")
fi
if mountpoint -q "$ROOT/sys"; then umount -l "$ROOT/sys"; fi

say "copying the checkout (tracked and untracked, not ignored files)"
rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
(cd "$SRC" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -C "$ROOT/src" -xf -

# a TLS-intercepting proxy's CA (PIP_CERT) goes to pip alone, not into the root's trust store
cert=""
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  cp "$PIP_CERT" "$ROOT/tmp/pip-ca.crt" && cert=/tmp/pip-ca.crt
fi
say "serving-only install: pip install /src (no extras)"
start=$(date +%s)
chroot "$ROOT" /usr/bin/env ${cert:+PIP_CERT=$cert REQUESTS_CA_BUNDLE=$cert SSL_CERT_FILE=$cert} /bin/sh -c 'rm -rf /opt/edgerank &&
  python3 -m venv /opt/edgerank &&
  /opt/edgerank/bin/pip install -q --no-cache-dir --disable-pip-version-check /src' >&2
echo "INSTALL_SECONDS $(( $(date +%s) - start ))"

run() { chroot "$ROOT" /usr/bin/env -i PATH=/opt/edgerank/bin:/usr/bin:/bin HOME=/root \
  EDGERANK_HOME=/var/lib/edgerank "$@"; }
echo "ARCH $(run uname -m)"
echo "PYTHON $(run python3 -c 'import platform; print(platform.python_version())')"
say "edgerank probe --explain"
start=$(date +%s)
run edgerank probe --explain
echo "PROBE_SECONDS $(( $(date +%s) - start ))"
say "edgerank score"
start=$(date +%s)
run edgerank score "how do I reset my router password" \
  "The city council approved the new budget for road repairs on Tuesday." \
  "To reset the router password, hold the reset button for ten seconds and log in with the default credentials printed on the label." \
  "Bananas are rich in potassium and make a quick breakfast."
echo "SCORE_SECONDS $(( $(date +%s) - start ))"
echo "INSTALL_SIZE $(du -sh "$ROOT/opt/edgerank" | cut -f1)"
say "done"
