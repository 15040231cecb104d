#!/bin/sh
# Build the appliance images with buildx bake from any directory:
#   packaging/build.sh                  # cpu + tensorflow (linux/amd64, linux/arm64) and gpu (amd64)
#   packaging/build.sh --push cpu       # one target, pushed (multi-platform results need --push)
#   IMAGE=registry.example.com/edge VERSION=0.2.0 packaging/build.sh --push
#   packaging/build.sh --print          # show the resolved build plan without building
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
exec docker buildx bake -f packaging/docker-bake.hcl "$@"
