#!/usr/bin/env bash
# Make a Debian bookworm base image without any registry: debootstrap a minbase root file
# system and `docker import` it. Use it where Docker Hub cannot be reached:
#
#   scripts/make-base-image.sh                       # -> local/bookworm-minbase
#   scripts/make-base-image.sh --force NAME          # rebuild, other tag
#   docker build --network host --build-arg BASE_IMAGE=local/bookworm-minbase -f docker/Dockerfile.cpu .
#
# Environment: DOCKER_HOST (e.g. from `eval "$(scripts/docker-engine.sh start)"`),
# DEBIAN_MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm).
# Needs root, debootstrap (`apt-get install debootstrap`) and a docker CLI.
set -euo pipefail

FORCE=0
if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
NAME=${1:-local/bookworm-minbase}
SUITE=${SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in debootstrap docker; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make-base-image.sh: $tool not found; fix: apt-get install -y debootstrap docker.io" >&2
        exit 1
    fi
done
if [ "$FORCE" = 0 ] && docker image inspect "$NAME" >/dev/null 2>&1; then
    echo "make-base-image.sh: $NAME exists (use --force to rebuild)" >&2
    echo "$NAME"
    exit 0
fi

ROOTFS=$(mktemp -d /tmp/rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >&2
# Like the official debian image: updates and security suites, no caches in the image.
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" - "$NAME" >&2
echo "$NAME"
