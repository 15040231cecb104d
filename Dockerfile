# syntax=docker/dockerfile:1.7
# The edge inference appliance: `edge serve` on port 8080, state in the /persist volume.
#
#   docker buildx bake -f packaging/docker-bake.hcl         # cpu + tensorflow (amd64, arm64), gpu
#   docker build --build-arg VARIANT=tensorflow -t edge:tensorflow .
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
# A bind mount (-v ./data:/persist) must be writable by uid 10001 (or gid 0).

ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.8

FROM ${UV_IMAGE} AS uv

# ---- one base per variant; the build and runtime stages share it, so the virtualenv's
# interpreter path is the same in both.
FROM ${PYTHON_IMAGE} AS base-cpu

FROM base-cpu AS base-tensorflow

# ---- frameworks variant (issue 18): the cpu base; only its extras differ (see the build stage)
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

# ---- build: a virtualenv holding the project and its dependencies, wheels only.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . /src
# The gpu variant: onnxruntime and onnxruntime-gpu install into the same package directory, so
# keep only the GPU build, at the version the extra resolved.
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    case "$VARIANT" in \
        cpu) extra="" ;; \
        tensorflow) extra="[tensorflow]" ;; \
        gpu) extra="[gpu]" ;; \
        frameworks) extra="[sklearn,xgboost,pytorch,huggingface]" ;; \
        *) echo "VARIANT must be cpu, tensorflow, gpu or frameworks, not '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install --only-binary=:all: "/src${extra}"; \
    if [ "$VARIANT" = gpu ]; then \
        ort_version="$(pip show onnxruntime-gpu | sed -n 's/^Version: //p')"; \
        pip uninstall -y onnxruntime onnxruntime-gpu; \
        pip install --only-binary=:all: --no-deps "onnxruntime-gpu==${ort_version}"; \
        python -c "import onnxruntime as o; p = o.get_available_providers(); assert 'CUDAExecutionProvider' in p, p"; \
    fi; \
    python -c "import edge, onnxruntime, pyarrow, polars"; \
    edge --help > /dev/null

# ---- runtime: the base, the virtualenv, a non-root user, the /persist volume.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ARG VARIANT
# Distribution packages follow the base image's release; pinning them breaks across bases.
# hadolint ignore=DL3008
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates tini; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 edge; \
    useradd --system --uid 10001 --gid 10001 --home-dir /home/edge --create-home \
        --shell /usr/sbin/nologin edge; \
    mkdir -p /persist; \
    chown 10001:0 /persist; \
    chmod 0770 /persist
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 packaging/entrypoint.sh /usr/local/bin/edge-entrypoint
# PIPELINE_URL, OCI_REGISTRY, OCI_USERNAME, OCI_PASSWORD and EDGE_BUNDLE come from `docker run
# -e` (never baked in); these have defaults.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PERSIST_DIR=/persist \
    CONFIG_CPUS=1 \
    DEBUG=false \
    EDGE_IMAGE_VARIANT=${VARIANT}
LABEL org.opencontainers.image.title="edge-appliance" \
      org.opencontainers.image.description="Edge inference appliance: serves a pipeline published to an OCI registry" \
      ai.edge.variant="${VARIANT}"
VOLUME ["/persist"]
EXPOSE 8080
EXPOSE 8081
USER 10001:10001
WORKDIR /home/edge
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health/ready', timeout=4)"]
ENTRYPOINT ["tini", "--", "edge-entrypoint"]
CMD ["serve"]
