# Multi-architecture and GPU image builds. Run from the repository root (bake resolves the
# context against the working directory), or through packaging/build.sh from anywhere:
#
#   docker buildx bake -f packaging/docker-bake.hcl                 # every variant, build cache only
#   docker buildx bake -f packaging/docker-bake.hcl --push cpu      # linux/amd64 + linux/arm64
#   IMAGE=registry.example.com/edge VERSION=0.2.0 docker buildx bake -f packaging/docker-bake.hcl --push
#
# arm64 on an x86-64 builder needs QEMU (docker run --privileged --rm tonistiigi/binfmt --install
# arm64) or an arm64 builder node. Multi-platform results need --push (or a containerd image
# store) to be kept.

variable "IMAGE" {
  default = "ghcr.io/edge-appliance/edge"
}

variable "VERSION" {
  default = "0.1.0"
}

group "default" {
  targets = ["cpu", "tensorflow", "gpu"]
}

target "_common" {
  context    = "."
  dockerfile = "Dockerfile"
  labels = {
    "org.opencontainers.image.version" = VERSION
  }
}

# onnxruntime on python:3.11-slim.
target "cpu" {
  inherits  = ["_common"]
  args      = { VARIANT = "cpu" }
  platforms = ["linux/amd64", "linux/arm64"]
  tags      = ["${IMAGE}:${VERSION}", "${IMAGE}:latest"]
}

# Adds TensorFlow (tensorflow-cpu on amd64, tensorflow on arm64) for pipelines with a
# TensorFlow step.
target "tensorflow" {
  inherits  = ["_common"]
  args      = { VARIANT = "tensorflow" }
  platforms = ["linux/amd64", "linux/arm64"]
  tags      = ["${IMAGE}:${VERSION}-tensorflow"]
}

# onnxruntime-gpu on the NVIDIA CUDA + cuDNN runtime. amd64 only: onnxruntime-gpu publishes no
# arm64 wheel on PyPI (Jetson devices need NVIDIA's JetPack builds).
target "gpu" {
  inherits  = ["_common"]
  args      = { VARIANT = "gpu" }
  platforms = ["linux/amd64"]
  tags      = ["${IMAGE}:${VERSION}-gpu"]
}

# Adds the native runtimes of scikit-learn, XGBoost, PyTorch and Hugging Face for pipelines with
# a model publish did not convert to ONNX (issue 18). Not in the default group: build it by name
# (`docker buildx bake -f packaging/docker-bake.hcl frameworks`).
target "frameworks" {
  inherits  = ["_common"]
  args      = { VARIANT = "frameworks" }
  platforms = ["linux/amd64", "linux/arm64"]
  tags      = ["${IMAGE}:${VERSION}-frameworks"]
}
