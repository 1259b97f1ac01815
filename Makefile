# ragfleet: two commands matter. `make demo` installs everything and answers a question;
# `make test` runs the test suite. Everything else here is what those two are made of.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_VERSION ?= 3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= uv
# CPU-only torch: pip's configured find-links folder (if any) holds the CPU wheel; uv does not
# read pip's config, so pass it on. ../shared/wheels, where present, caches the llama-cpp-python
# build (otherwise it builds from source, about 15-20 minutes on 2 cores).
PIP_FIND_LINKS := $(shell python3 -m pip config get global.find-links 2>/dev/null)
FIND_LINKS := $(foreach d,$(PIP_FIND_LINKS) ../shared/wheels,$(if $(wildcard $(d)),--find-links $(d)))
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
SERVICES := embedder retriever generator gateway
PROTO_OUT := src

.PHONY: help install generate-protos demo test test-unit test-integration test-e2e lint typecheck protos check-protos helm clean

help:
	@echo "make demo   install, bring the fleet up, ask a sample question (fleet stays up: ragfleet down)"
	@echo "make test   install, check generated code and types, run the whole test suite"

INTEGRATIONS := integrations/langchain-ragfleet

$(VENV)/.installed: pyproject.toml tools/pyproject.toml $(foreach s,$(SERVICES),services/$(s)/pyproject.toml) $(foreach i,$(INTEGRATIONS),$(i)/pyproject.toml) scripts/install_helm.sh
	command -v $(UV) >/dev/null || python3 -m pip install --quiet "uv==0.13.8"
	test -x $(PY) || $(UV) venv --quiet --python $(PYTHON_VERSION) $(VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(UV) pip install --python $(PY) $(FIND_LINKS) \
	  -e ".[dev]" $(foreach s,$(filter-out gateway,$(SERVICES)),-e services/$(s)) \
	  -e "services/gateway[test]" -e tools \
	  $(foreach i,$(INTEGRATIONS),-e "$(i)[test]")
	scripts/install_helm.sh $(VENV)/bin
	touch $@

install: $(VENV)/.installed

GENERATED := $(foreach s,common $(SERVICES),ragfleet/$(s))

# Generates Python stubs and .pyi type stubs for every proto into OUT (default src/).
protos: install
	$(MAKE) --no-print-directory generate-protos OUT=$(PROTO_OUT)

generate-protos:
	cd $(OUT) && rm -rf $(GENERATED)
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(OUT) --mypy_out=$(OUT) \
	  --grpc_python_out=$(OUT) --mypy_grpc_out=$(OUT) \
	  --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
	  $$(find protos -name '*.proto' | sort) >/dev/null
	for d in $$(cd $(OUT) && find $(GENERATED) -name '*_pb2.py' -printf '%h\n' | sort -u); do \
	  touch $(OUT)/$$d/__init__.py $(OUT)/$$(dirname $$d)/__init__.py; done

# Fails when the checked-in stubs differ from what the protos generate.
check-protos: install
	rm -rf .protos-check && mkdir -p .protos-check
	$(MAKE) --no-print-directory generate-protos OUT=.protos-check
	for g in $(GENERATED); do diff -r -x __pycache__ .protos-check/$$g $(PROTO_OUT)/$$g || \
	  { echo "generated stubs are stale: run 'make protos' and commit the result"; exit 1; }; done
	rm -rf .protos-check

lint: install
	$(VENV)/bin/ruff check src services tools integrations tests benchmarks scripts
	$(VENV)/bin/ruff format --check src services tools integrations tests benchmarks scripts

typecheck: install
	$(VENV)/bin/mypy src services/*/src tools/src $(foreach i,$(INTEGRATIONS),$(i)/src)

test: install check-protos lint typecheck
	$(VENV)/bin/pytest -m "not slow"

test-unit: install
	$(VENV)/bin/pytest -m unit

test-integration: install
	$(VENV)/bin/pytest -m integration

test-e2e: install
	$(VENV)/bin/pytest -m e2e

# Renders the umbrella chart with its defaults (the chart tests render more variants).
helm: install
	for c in embedder retriever generator gateway ragfleet; do $(VENV)/bin/helm dependency build helm/$$c >/dev/null; done
	$(VENV)/bin/helm template ragfleet helm/ragfleet

demo: install
	$(VENV)/bin/ragfleet up
	$(VENV)/bin/ragfleet ask "Which embedding model does the embedder use?"
	@echo "The fleet is still up: ask more with '$(VENV)/bin/ragfleet ask \"...\"', stop it with '$(VENV)/bin/ragfleet down'."

clean:
	-$(VENV)/bin/ragfleet down
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
