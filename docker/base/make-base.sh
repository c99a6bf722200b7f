#!/usr/bin/env bash
# Makes the base image IMAGE (default presso-base:bookworm) from Debian packages, for machines
# that reach Debian's mirror but no image registry: debootstrap a minimal bookworm, add Python
# 3.11 in a venv at /opt/venv (so `pip`/`python` behave as in python:3.11-slim), then `docker import`.
# The host's extra CA certificates (/usr/local/share/ca-certificates) go in too: builds behind a
# TLS-intercepting proxy must trust what the host trusts.
set -euo pipefail
IMAGE=${1:-presso-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base: $IMAGE exists"; exit 0
fi
command -v debootstrap >/dev/null || { echo "base: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d /var/tmp/presso-rootfs.XXXXXX)
trap 'umount -R "$root/proc" 2>/dev/null || true; rm -rf "$root"' EXIT
echo "base: debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,procps \
    bookworm "$root" "$MIRROR" >/dev/null
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
chroot "$root" python3 -m venv /opt/venv
chroot "$root" /opt/venv/bin/pip install --quiet --upgrade pip 2>/dev/null || true
# apt caches and docs are not needed at run time
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
echo "base: docker import -> $IMAGE"
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
