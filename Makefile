# Service Registry. `make run` and `make test` install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUBS := client/neural_hive_integration/proto_stubs
ADDR ?= localhost:50051

.PHONY: run test install proto proto-service-registry proto-gen-all proto-check bench bench-full clean

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./client -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/service-registry serve

test: $(STAMP)
	$(PY) -m pytest

# Regenerate the committed stubs from protos/service_registry.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(STUBS) --grpc_python_out=$(STUBS) \
		--pyi_out=$(STUBS) protos/service_registry.proto
	# generated code imports its sibling absolutely; make it package-relative
	sed -i 's/^import service_registry_pb2 as/from . import service_registry_pb2 as/' \
		$(STUBS)/service_registry_pb2_grpc.py

proto-service-registry proto-gen-all: proto

# Fails when the committed stubs differ from what `make proto` produces.
proto-check: proto
	git diff --exit-code -- $(STUBS)

bench: $(STAMP)
	$(VENV)/bin/service-registry bench --quick

bench-full: $(STAMP)
	$(VENV)/bin/service-registry bench --full

clean:
	rm -rf $(VENV) .pytest_cache
