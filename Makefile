# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvemb-installed
KVEMB_MODEL ?= Qwen/Qwen3-0.6B
export KVEMB_MODEL

.PHONY: install demo test lint unit slow bench clean

$(STAMP): pyproject.toml integrations/langchain/pyproject.toml integrations/llama-index/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The local CPU build; an unpinned torch would pull several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]" -e "integrations/langchain[test]" -e "integrations/llama-index[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m kvemb_rag.demo

lint: $(STAMP)
	$(PY) -m ruff check kvemb_rag tests benchmarks integrations
	$(PY) -m mypy
	$(PY) -m mypy -p langchain_kvemb -p llama_index.embeddings.kvemb

test: $(STAMP) lint
	$(PY) -m pytest -q tests integrations/langchain/tests integrations/llama-index/tests

slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

bench: $(STAMP)
	$(PY) -m benchmarks.run --bf16

clean:
	rm -rf $(VENV) .kvemb demo_store
