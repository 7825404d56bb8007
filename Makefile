# Two commands on a fresh machine: `make demo` and `make test`.
# GPU users: make demo TORCH_SPEC='torch==2.13.0' TORCH_INDEX='--index-url <the CUDA wheel index of your torch build>'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_FLAGS ?= -q --disable-pip-version-check
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xclass-installed
export DS_ACCELERATOR ?= cpu
# Ray: local runs listen on 127.0.0.1 with a per-run token; clusters need RAY_AUTH_MODE=token (docs/security.md)
export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONWARNINGS ?= ignore::FutureWarning

.PHONY: install demo test bench clean

install: $(STAMP)

# Installs once; re-runs only when pyproject.toml changes (idempotent and quiet).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[xclass] installing into $(VENV) ($(TORCH_SPEC)) ..."
	@$(PY) -m pip install $(PIP_FLAGS) $(TORCH_INDEX) "$(TORCH_SPEC)" -e ".[test]" 2>&1 | grep -v -E "^WARNING: Location|is ignored" || true
	@$(PY) -c "import torch, deepspeed, ray, faiss, pyarrow, numpy" 2>/dev/null || { echo "[xclass] install failed"; exit 1; }
	@touch $(STAMP)

demo: install
	@$(VENV)/bin/xclass demo --out runs/demo

test: install
	@$(PY) -m pytest -q

bench: install
	@$(PY) -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)" -e ".[bench]" 2>&1 | grep -v "is ignored" || true
	@$(PY) tools/bench_heads.py

clean:
	rm -rf runs .pytest_cache
