#!/usr/bin/env bash
# Test-only stand-ins for the public images the project names (python:3.11-slim,
# postgres:16-bookworm, redis:7-bookworm), built from Debian packages and tagged with the public
# names so compose.yaml and the Bento's generated Dockerfile build unchanged. They exist only
# because no image registry is reachable in CI. An image of that name that is not a stand-in (a
# pulled one) is left alone; a stand-in is rebuilt only when its files here changed.
# Needs a Docker engine (DOCKER_HOST, see engine.sh) and debootstrap.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
docker=/usr/bin/docker
MIRROR="${SCOREBOX_STANDIN_MIRROR:-http://deb.debian.org/debian}"
BASE=scorebox-standin/debian:bookworm
LABEL=org.scorebox.standin

label_of() { "$docker" image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null; }
exists() { "$docker" image inspect "$1" >/dev/null 2>&1; }

# The machine's extra certificate authorities (a TLS-inspecting proxy's), for the Python image.
extra_ca="$(mktemp -d)"
trap 'rm -rf "$extra_ca"' EXIT
cp /usr/local/share/ca-certificates/*.crt "$extra_ca"/ 2>/dev/null || true

digest() {  # what a stand-in is built from: its folder, the base's recipe, the extra CAs
    { cat "$here/standins.sh"; tar -C "$here" --sort=name --mtime=@0 --owner=0 --group=0 -cf - "$1";
      cat "$extra_ca"/* 2>/dev/null || true; } | sha256sum | cut -c1-16
}

base_digest="$( { cat "$here/standins.sh"; echo "$MIRROR"; } | sha256sum | cut -c1-16)"
if [ "$(label_of "$BASE")" != "$base_digest" ]; then
    echo "building $BASE with debootstrap from $MIRROR" >&2
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || {
        tail -n 30 "$rootfs.log" >&2
        exit 1
    }
    cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
SOURCES
    # As Debian's own images: packages installed during a build start no service.
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod +x "$rootfs/usr/sbin/policy-rc.d"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    tar --numeric-owner -C "$rootfs" -cf - . | "$docker" import \
        --change "LABEL $LABEL=$base_digest" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$rootfs" "$rootfs.log"
fi

build() {  # build FOLDER as TAG unless a pulled image or an up-to-date stand-in has that tag
    local folder=$1 tag=$2 want have
    want="$(digest "$folder")"
    if exists "$tag"; then
        have="$(label_of "$tag")"
        if [ -z "$have" ]; then
            echo "$tag: not a stand-in, using it as it is" >&2
            return
        fi
        [ "$have" = "$want" ] && return
    fi
    echo "building the stand-in $tag" >&2
    local context
    context="$(mktemp -d)"
    cp -r "$here/$folder/." "$context/"
    mkdir -p "$context/extra-ca"
    [ "$folder" != python ] || cp -r "$extra_ca"/. "$context/extra-ca/"
    "$docker" build --label "$LABEL=$want" -t "$tag" "$context" >"$context.log" 2>&1 || {
        echo "building $tag failed:" >&2
        tail -n 40 "$context.log" >&2
        exit 1
    }
    rm -rf "$context" "$context.log"
}

build python python:3.11-slim
build postgres postgres:16-bookworm
build redis redis:7-bookworm
for tag in python:3.11-slim postgres:16-bookworm redis:7-bookworm; do
    echo "$tag: $("$docker" image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec)" >&2
done
