#!/usr/bin/env bash
# The Containerfile's base image made from Debian packages alone, for a machine that reaches
# a Debian mirror but no container registry: debootstrap a minimal bookworm with python3,
# trim it, and import it as IMAGE (default localhost/edgerank-base:bookworm).
# Elsewhere, skip this: the Containerfile's default BASE is python:3.12-slim.
#
# Usage (root): deploy/container/build-base.sh [IMAGE]
# Environment: PODMAN (default: podman, with the storage driver podman is already set up
# for: forcing one fails with "database graph driver mismatch" once podman has used
# another), DEBIAN_MIRROR, DEBIAN_SUITE, EDGERANK_BASE_ROOT (the debootstrap directory).
set -euo pipefail
IMAGE=${1:-localhost/edgerank-base:bookworm}
ROOT=${EDGERANK_BASE_ROOT:-/var/tmp/edgerank-base-root}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
PODMAN=${PODMAN:-podman}

[ "$(id -u)" = 0 ] || { echo "build-base.sh: needs root (debootstrap)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "build-base.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
if [ ! -e "$ROOT/.edgerank-root-done" ]; then
  rm -rf "$ROOT"
  # python3-venv for the build stage; ca-certificates for `edgerank pull` over https
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR" >&2
  chroot "$ROOT" apt-get clean
  rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/* "$ROOT"/var/log/* \
    "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
    "$ROOT"/usr/share/locale/*
  touch "$ROOT/.edgerank-root-done"
fi
tar --numeric-owner --exclude=./.edgerank-root-done --exclude='./proc/*' --exclude='./sys/*' \
  --exclude='./dev/*' -C "$ROOT" -cf - . |
  $PODMAN import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$IMAGE" >&2
echo "$IMAGE"
