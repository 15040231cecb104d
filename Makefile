# Two commands do all set-up on a fresh Debian/Ubuntu machine (as root, or with sudo):
#   make demo   publish the example pipeline to a local OCI layout and serve it on :8080
#   make test   run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT    := docker-registry apache2-utils wrk nghttp2-client postgresql
DEMO   := demo
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages demo test lint bench proto clean

setup: system-packages $(VENV)/.installed

system-packages:
	@missing=""; for p in $(APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,tensorflow]'
	touch $@

demo: setup
	$(PY) examples/breast-cancer/make_model.py
	rm -rf $(DEMO)/layout
	$(VENV)/bin/edge publish examples/breast-cancer/pipeline.yaml --layout $(DEMO)/layout --json > $(DEMO)/published.json
	@echo "published: $$($(PY) -c 'import json; print(json.load(open("$(DEMO)/published.json"))["pipeline_url"])')"
	@echo "try: curl -s -XPOST localhost:8080/pipelines/breast-cancer -H 'Content-Type: application/json; format=pandas-records' --data-binary @examples/breast-cancer/data/one-row.json"
	PIPELINE_URL="oci-layout:$(CURDIR)/$(DEMO)/layout" PERSIST_DIR=$(DEMO)/persist $(VENV)/bin/edge serve --port 8080

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
	rm -rf $(VENV) $(DEMO)
