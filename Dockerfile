# syntax=docker/dockerfile:1.7
# The edge inference appliance: `edge serve` on port 8080 (PORT), state in the /persist volume.
#
#   docker build -t edge .                                   # cpu
#   podman build --format docker -t edge .                   # podman: keep the HEALTHCHECK
#   docker build --build-arg VARIANT=tensorflow -t edge:tensorflow .
#   docker buildx bake -f packaging/docker-bake.hcl          # cpu + tensorflow (amd64, arm64), gpu
#   packaging/podman/local.sh build cpu                      # no image registry: a local base
#
# VARIANT selects the image:
#   cpu         (default) onnxruntime on python:3.11-slim
#   tensorflow  adds the `tensorflow` extra (tensorflow-cpu on x86-64, tensorflow on arm64)
#   gpu         onnxruntime-gpu (the `gpu` extra) on an NVIDIA CUDA + cuDNN runtime base, amd64
#   frameworks  adds the native runtimes of scikit-learn, XGBoost, PyTorch and Hugging Face (the
#               `sklearn`, `xgboost`, `pytorch`, `huggingface` extras) for models publish did
#               not convert to ONNX; the cpu image is unchanged (README: Frameworks)
#
# Run it with the seed's variables (EDGE_BUNDLE and DEBUG optional):
#   docker run -p 8080:8080 -v edge-data:/persist \
#     -e PIPELINE_URL=... -e OCI_REGISTRY=... -e OCI_USERNAME=... -e OCI_PASSWORD=... \
#     -e CONFIG_CPUS=1 [-e EDGE_BUNDLE=...] [-e DEBUG=true] IMAGE
# The process runs as uid 10001, gid 0. A bind mount (-v ./data:/persist) must be writable by
# uid 10001 or by gid 0: `chown 10001 ./data`, or a root-owned folder with group write
# (`chmod 0770 ./data`). Set the port with -e PORT=... (the HEALTHCHECK reads it).

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.8

FROM ${UV_IMAGE} AS uv

# ---- one base per variant; the build and runtime stages share it, so the virtualenv's
# interpreter path is the same in both.
FROM ${PYTHON_IMAGE} AS base-cpu

FROM base-cpu AS base-tensorflow

# ---- frameworks variant (issue 18): the cpu base; only its extras differ (see the deps stage)
FROM base-cpu AS base-frameworks

FROM ${CUDA_IMAGE} AS base-gpu
# CUDA images carry no Python 3.11: install a standalone CPython at a fixed path.
ENV UV_PYTHON_INSTALL_DIR=/opt/python
RUN --mount=from=uv,source=/uv,target=/usr/local/bin/uv \
    set -eu; \
    uv python install 3.11; \
    ln -s "$(uv python find 3.11)" /usr/local/bin/python3.11; \
    ln -s python3.11 /usr/local/bin/python3; \
    ln -s python3.11 /usr/local/bin/python; \
    python3 --version

# ---- deps: a virtualenv with the dependencies, wheels only, trimmed (packaging/slim-venv.sh).
# From pyproject.toml alone, so a change to the code reuses it, and the runtime's copy of it is
# the same layer from one code change to the next (an update downloads the code, not 400 MB).
# `base-${VARIANT:-cpu}`, not `base-${VARIANT}`: buildah 1.28 (podman 4.3, Debian 12) works out
# which stages to build from --build-arg values alone, skips base-cpu when VARIANT is left at its
# default, and then fails with "base-cpu: image not known".
# hadolint ignore=DL3006
FROM base-${VARIANT:-cpu} AS deps
ARG VARIANT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# strip (binutils) for slim-venv; these stages are not shipped.
# hadolint ignore=DL3008
RUN set -eu; \
    if ! command -v strip > /dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends binutils; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml /src/
COPY --chmod=0755 packaging/slim-venv.sh /usr/local/bin/slim-venv
# The gpu variant: onnxruntime and onnxruntime-gpu install into the same package directory, so
# keep only the GPU build, at the version the extra resolved. /opt/runtime-venv is the copy the
# image gets: the same, without pip and setuptools (the build stage still needs them).
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    case "$VARIANT" in \
        cpu) extras="" ;; \
        tensorflow) extras="tensorflow" ;; \
        gpu) extras="gpu" ;; \
        frameworks) extras="sklearn,xgboost,pytorch,huggingface" ;; \
        *) echo "VARIANT must be cpu, tensorflow, gpu or frameworks, not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    python3 -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + [r for e in sys.argv[1].split(",") if e for r in p["optional-dependencies"][e]]))' \
        "$extras" > /tmp/requirements.txt; \
    pip install --only-binary=:all: -r /tmp/requirements.txt; \
    if [ "$VARIANT" = gpu ]; then \
        ort_version="$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')"; \
        pip uninstall -y onnxruntime onnxruntime-gpu; \
        pip install --only-binary=:all: --no-deps "onnxruntime-gpu==${ort_version}"; \
    fi; \
    pip check; \
    slim-venv /opt/venv; \
    cp -a /opt/venv /opt/runtime-venv; \
    /opt/runtime-venv/bin/python -m pip uninstall --yes --quiet pip setuptools; \
    rm -f /opt/runtime-venv/bin/pip*

# ---- build: the project over the dependencies; its own files gathered under /staging, with the
# paths they have in the virtualenv.
FROM deps AS build
COPY . /src
RUN set -eu; \
    pip install --no-cache-dir --only-binary=:all: --no-deps /src; \
    pip check; \
    python -I -c 'import importlib.metadata as m, os, shutil; d = m.distribution("edge-appliance"); files = [p for p in (d.locate_file(f).resolve() for f in d.files or []) if p.is_file()]; [(os.makedirs(os.path.dirname(f"/staging{p}"), exist_ok=True), shutil.copy2(p, f"/staging{p}")) for p in files]; print(len(files), "files staged")'

# ---- runtime: the base, the virtualenv, a non-root user, the /persist volume.
# hadolint ignore=DL3006
FROM base-${VARIANT:-cpu} AS runtime
ARG VARIANT
# tini and CA certificates, unless the base has them (packaging/podman/base.sh's does).
# Distribution packages follow the base image's release; pinning them breaks across bases.
# hadolint ignore=DL3008
RUN set -eu; \
    if ! command -v tini > /dev/null || [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends ca-certificates tini; \
        apt-get clean; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log; \
    fi; \
    useradd --system --uid 10001 --gid 0 --home-dir /home/edge --create-home \
        --shell /usr/sbin/nologin edge; \
    mkdir -p /persist; \
    chown 10001:0 /persist; \
    chmod 0770 /persist
COPY --from=deps /opt/runtime-venv /opt/venv
COPY --from=build /staging/ /
COPY --chmod=0755 packaging/entrypoint.sh /usr/local/bin/edge-entrypoint
# PIPELINE_URL, OCI_REGISTRY, OCI_USERNAME, OCI_PASSWORD and EDGE_BUNDLE come from `docker run
# -e` (never baked in); these have defaults.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PERSIST_DIR=/persist \
    PORT=8080 \
    CONFIG_CPUS=1 \
    DEBUG=false \
    EDGE_IMAGE_VARIANT=${VARIANT}
LABEL org.opencontainers.image.title="edge-appliance" \
      org.opencontainers.image.description="Edge inference appliance: serves a pipeline published to an OCI registry" \
      ai.edge.variant="${VARIANT}"
# What the appliance imports, in the image as shipped (trimmed, no pip).
RUN set -eu; \
    python -c "import edge.server, edge.pipeline, edge.validations, ops_sync.agent, onnxruntime, pyarrow.compute, pyarrow.parquet, polars, pandas"; \
    if [ "$VARIANT" = gpu ]; then \
        python -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p"; \
    fi; \
    edge --help > /dev/null
VOLUME ["/persist"]
EXPOSE 8080
EXPOSE 8081
# gid 0: a bind-mounted folder owned by root with group write works without a chown.
USER 10001:0
WORKDIR /home/edge
# Probes the port the server listens on (PORT), not a fixed 8080.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PORT', '8080'), timeout=4)"]
ENTRYPOINT ["tini", "--", "edge-entrypoint"]
CMD ["serve"]
