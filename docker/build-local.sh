#!/usr/bin/env bash
# Builds Presso's CPU image (and a PostgreSQL image) where a Docker engine runs but no image
# registry is reachable: the base image is made from Debian's packages (docker/base/make-base.sh)
# and docker/Dockerfile is built on it, the same Dockerfile that builds on python:3.11-slim.
# Python packages come from PyPI inside the build (host network). Idempotent: every step is
# cached, a second run takes seconds.
#
#   docker/build-local.sh            # or: make docker-images
#   BASE_IMAGE=python:3.11-slim docker/build-local.sh   # where a registry is reachable
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-presso-base:bookworm}
PRESSO_IMAGE=${PRESSO_IMAGE:-presso:cpu}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-presso-postgres:15}
WHEELS=${WHEELS:-$HOME/.cache/presso/wheels}   # where `make setup` keeps its llama-cpp-python wheel
CONTEXT=${CONTEXT:-/var/tmp/presso-docker-context}
TORCH_VERSION=2.13.0
LLAMA_CPP_VERSION=0.3.36
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}   # the classic builder: no buildx plugin or frontend image needed

bash docker/engine.sh
[ "$BASE_IMAGE" != presso-base:bookworm ] || bash docker/base/make-base.sh "$BASE_IMAGE"

# Wheels this machine already has: a CPU torch (pip's configured find-links/indexes, where one
# lies on disk) and the llama-cpp-python wheel `make setup` built; without them the build
# downloads torch from PyTorch's CPU index and compiles llama-cpp-python.
if ! compgen -G "docker/wheels/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then
    tmp=$(mktemp -d)
    if python3 -m pip download --quiet --no-deps --only-binary :all: "torch==$TORCH_VERSION" -d "$tmp" 2>/dev/null \
        && compgen -G "$tmp/torch-$TORCH_VERSION+cpu-*.whl" >/dev/null; then
        cp "$tmp"/torch-*.whl docker/wheels/
    fi
    rm -rf "$tmp"
fi
# LLAMA_WHEEL: the Makefile's (its folder under WHEELS is named after the build flags).
LLAMA_WHEEL=${LLAMA_WHEEL:-$(ls -t "$WHEELS"/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl \
    "$WHEELS"/*/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl 2>/dev/null | head -1)}
if [ -n "$LLAMA_WHEEL" ] && [ -f "$LLAMA_WHEEL" ]; then
    cmp -s "$LLAMA_WHEEL" "docker/wheels/$(basename "$LLAMA_WHEEL")" || cp "$LLAMA_WHEEL" docker/wheels/
fi
ls docker/wheels/*.whl 2>/dev/null | sed 's/^/build: using /' || true

# The classic builder reads only the context's .dockerignore: build from a copy holding just
# what the Dockerfile copies (the repository has .venv and caches of several GB).
mkdir -p "$CONTEXT/docker/wheels"
cp pyproject.toml README.md "$CONTEXT/"
rm -rf "$CONTEXT/presso" && cp -r presso "$CONTEXT/presso"
find "$CONTEXT/presso" -name __pycache__ -prune -exec rm -rf {} +
rsync_like() { # copy new wheels, drop ones no longer here
    find "$CONTEXT/docker/wheels" -type f ! -name README.md -printf '%f\n' | while read -r f; do
        [ -e "docker/wheels/$f" ] || rm -f "$CONTEXT/docker/wheels/$f"; done
    for f in docker/wheels/*; do cmp -s "$f" "$CONTEXT/$f" || cp "$f" "$CONTEXT/$f"; done
}
rsync_like

start=$(date +%s)
docker build --network host -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$PRESSO_IMAGE" "$CONTEXT"
if [ "$BASE_IMAGE" = presso-base:bookworm ]; then
    docker build --network host -f docker/postgres/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -t "$POSTGRES_IMAGE" docker/postgres
fi
docker image prune -f >/dev/null   # layers of earlier builds
echo "build: $PRESSO_IMAGE and $POSTGRES_IMAGE in $(( $(date +%s) - start )) s"
docker image ls --format "{{.Repository}}:{{.Tag}}  {{.Size}}" | grep -E "^($(echo "$PRESSO_IMAGE" "$POSTGRES_IMAGE" "$BASE_IMAGE" | sed "s/ /|/g"))  " || true
