#!/usr/bin/env bash
# Makes a local Debian bookworm base image with Python 3.11, for machines that cannot pull the
# official python:3.11-slim image (no Docker Hub). It has what the Dockerfiles use from the official
# one: `python` and `pip` on PATH under /usr/local (a venv there), so `pip install --prefix=/install`
# then `COPY --from=build /install /usr/local` behaves the same, and `useradd`.
#
#   docker/make-base.sh [IMAGE] [MIRROR]     default: cmnrec-base:bookworm http://deb.debian.org/debian
#
# Needs root, debootstrap and a running dockerd. The host's CA bundle is copied in (pip inside the
# image then trusts what the host trusts, e.g. a TLS-intercepting proxy).
set -euo pipefail
IMAGE=${1:-cmnrec-base:bookworm}
MIRROR=${2:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /tmp/cmnrec-base.XXXXXX)
trap 'rm -rf --one-file-system "$ROOT"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
chroot "$ROOT" python3 -m venv /usr/local
chroot "$ROOT" /usr/local/bin/python -m pip --version >/dev/null
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
fi
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/archives/*.deb
tar --numeric-owner -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
echo "made $IMAGE"
