# Two commands do all set-up on a fresh Debian/Ubuntu machine (as root, or with sudo):
#   make demo   a venv with what serving needs; publish the example pipeline to a local OCI
#               layout and serve it on :8080 (PORT=... to change)
#   make test   everything the tests need (apt packages, test tools, TensorFlow); the whole suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT    := docker-registry apache2-utils wrk nghttp2-client postgresql chromium chromium-driver
# Building and running the image locally (tests/test_image.py, packaging/podman/local.sh).
IMAGE_APT := podman runc debootstrap
DEMO   := demo
EXAMPLE := examples/breast-cancer
PORT   ?= 8080
KSERVE_VENV := .venv-kserve
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages image-setup demo example-model test lint bench proto clean

setup: system-packages $(VENV)/.installed $(KSERVE_VENV)/.installed

system-packages:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT)"

image-setup:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(IMAGE_APT)"

.PHONY: apt-install
apt-install:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# A Debian python3 makes venvs only with python3-venv installed.
$(VENV)/bin/python:
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)

# What `edge publish` and `edge serve` need: the project's dependencies, no extras.
$(VENV)/.serve: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

# What the tests and linters need on top: the test tools and TensorFlow.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,tensorflow]'
	touch $@ $(VENV)/.serve

# KServe's own client for tests/test_v2_e2e.py, in a venv of its own (it pins pandas<3); the
# tests never reach PyPI themselves.
$(KSERVE_VENV)/.installed: tests/kserve-requirements.txt | $(VENV)/bin/python
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install -q -r tests/kserve-requirements.txt
	touch $@

# The example's model and sample request are committed; `make example-model` remakes them
# (scikit-learn and skl2onnx, from the test tools).
demo: $(VENV)/.serve
	rm -rf $(DEMO)/layout
	mkdir -p $(DEMO)
	$(VENV)/bin/edge publish $(EXAMPLE)/pipeline.yaml --layout $(DEMO)/layout --json > $(DEMO)/published.json
	@echo "published: $$($(PY) -c 'import json; print(json.load(open("$(DEMO)/published.json"))["pipeline_url"])')"
	@echo "serving on port $(PORT); once it prints 'Engine ready', from another terminal:"
	@echo "  curl -s localhost:$(PORT)/pipelines"
	@echo "  curl -s localhost:$(PORT)/models"
	@echo "  curl -s -XPOST localhost:$(PORT)/pipelines/breast-cancer -H 'Content-Type: application/json; format=pandas-records' --data-binary @$(EXAMPLE)/data/one-row.json"
	@echo "stop it with Ctrl-C"
	PIPELINE_URL="oci-layout:$(CURDIR)/$(DEMO)/layout" PERSIST_DIR=$(DEMO)/persist $(VENV)/bin/edge serve --port $(PORT)

example-model: setup
	$(PY) $(EXAMPLE)/make_model.py

test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check edge ops_sync mac tests bench
	$(VENV)/bin/ruff format --check edge ops_sync mac
	$(VENV)/bin/mypy edge ops_sync

bench: setup
	$(PY) bench/serve.py

# the Open Inference Protocol's gRPC messages (edge/v2): regenerated from the proto, committed;
# their own descriptor pool keeps them apart from other `inference` packages in a process
proto: setup
	$(PY) -m grpc_tools.protoc -I edge/v2 --python_out=edge/v2 --pyi_out=edge/v2 edge/v2/grpc_predict_v2.proto
	sed -i 's/_descriptor_pool.Default()/_descriptor_pool.DescriptorPool()/' edge/v2/grpc_predict_v2_pb2.py

clean:
	rm -rf $(VENV) $(KSERVE_VENV) $(DEMO)
