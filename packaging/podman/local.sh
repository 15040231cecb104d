#!/usr/bin/env bash
# Build and run the appliance image with podman on a machine that reaches no image registry
# (our CI machine): the base is a Debian root made here with debootstrap, nothing is pulled.
#
#   packaging/podman/local.sh base                      # the base image (made once, then cached)
#   packaging/podman/local.sh build [--tag TAG] [VARIANT]
#       the Dockerfile's default variant (cpu), or VARIANT (tensorflow); TAG default
#       localhost/edge:VARIANT. Prints the tag.
#   packaging/podman/local.sh podman ARGS...            # podman with this machine's settings
#
# Needs root, podman, runc and debootstrap (`make image-setup` installs them). State kept between
# runs on the same machine (delete it to start cold):
#   /var/cache/edge-podman/base-<recipe hash>.tar   the debootstrapped root (~90 s to make)
#   /var/cache/edge-podman/storage                  podman's images and build layers
#
# Where docker or podman can pull python:3.11-slim, none of this is needed:
#   podman build --format docker -t edge .      (or: docker build -t edge .)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${EDGE_PODMAN_CACHE:-/var/cache/edge-podman}"
export CONTAINERS_CONF="$here/containers.conf"
export CONTAINERS_STORAGE_CONF="$here/storage.conf"

say() { echo "local.sh: $*" >&2; }
die() { echo "local.sh: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, podman's storage under /var/cache)"
for tool in podman runc debootstrap; do
    command -v "$tool" > /dev/null || die "$tool is missing: run \`make image-setup\`"
done

# The base's tag follows its recipe: a changed base.sh makes a new base.
base_tag() {
    echo "localhost/edge-base:bookworm-$(sha256sum "$here/base.sh" | cut -c1-12)"
}

base() {
    local tag tar root
    tag="$(base_tag)"
    if podman image exists "$tag"; then
        echo "$tag"
        return
    fi
    tar="$cache/base-${tag##*-}.tar"
    if [ ! -s "$tar" ]; then
        say "making the Debian base with debootstrap (about 90 s)"
        mkdir -p "$cache"
        root="$(mktemp -d "$cache/root.XXXXXX")"
        trap 'rm -rf "$root"' RETURN
        bash "$here/base.sh" "$root"
        tar -C "$root" --numeric-owner -cf "$tar.part" .
        mv "$tar.part" "$tar"
    fi
    podman import --quiet --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar" "$tag" > /dev/null
    echo "$tag"
}

build() {
    local tag="" variant="" base_image args=()
    if [ "${1:-}" = --tag ]; then
        tag="${2:?--tag needs a value}"
        shift 2
    fi
    variant="${1:-}"
    if [ -n "$variant" ]; then
        args+=(--build-arg "VARIANT=$variant")  # else the Dockerfile's default
    fi
    tag="${tag:-localhost/edge:${variant:-cpu}}"
    base_image="$(base)"
    say "building $tag (VARIANT=${variant:-default}) on $base_image"
    # --format docker keeps HEALTHCHECK (the OCI format has none); --pull=never: nothing is
    # fetched from an image registry. pip in the build reaches the package index with this
    # machine's CA bundle, mounted for the build only (not copied into the image).
    podman build --pull=never --format docker --network host \
        --build-arg "PYTHON_IMAGE=$base_image" "${args[@]}" \
        -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
        -t "$tag" "$repo" >&2
    echo "$tag"
}

command="${1:-}"
shift || true
case "$command" in
    base) base ;;
    build) build "$@" ;;
    podman) exec podman "$@" ;;
    *) die "usage: local.sh base | build [--tag TAG] [VARIANT] | podman ARGS..." ;;
esac
