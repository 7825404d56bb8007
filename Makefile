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

.PHONY: install demo test bench clean gpu-check gpu-wheels

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

# GPU check on one CUDA GPU (<= 5 min, no network; docs/gpu.md): `pytest -m gpu` + tools/bench_gpu.py.
#   make gpu-check                   Python of the venv (made with a CUDA torch: TORCH_SPEC/TORCH_INDEX)
#   make gpu-check GPU_PY=python3    a Python whose torch already has CUDA; Ray, DeepSpeed and faiss are
#                                    not needed. pyyaml, tqdm and pytest, when missing there, are unpacked
#                                    from the wheels in $(GPU_WHEELS) (fill it once: `make gpu-wheels`).
GPU_PY ?= $(PY)
GPU_WHEELS ?= .gpu-wheels
GPU_DEPS ?= .gpu-deps
GPU_PKGS ?= pyyaml==6.0.4 tqdm==4.70.1 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4
GPU_PYVER ?= 3.12
GPU_TEST_TIMEOUT ?= 150
GPU_BENCH_TIMEOUT ?= 150
GPU_BENCH_ARGS ?= --budget-s 100
GPU_ENV = PYTHONPATH=$(CURDIR):$(CURDIR)/$(GPU_DEPS)$(if $(PYTHONPATH),:$(PYTHONPATH)) DS_ACCELERATOR=cuda

gpu-wheels:
	@$(PYTHON) -m pip download $(PIP_FLAGS) --no-deps --only-binary=:all: --python-version $(GPU_PYVER) \
		--platform manylinux2014_x86_64 -d $(GPU_WHEELS) $(GPU_PKGS)
	@ls $(GPU_WHEELS)

gpu-check:
	@test -n "$(XCLASS_GPU_TEST_DEVICE)" || $(GPU_PY) -c "import torch; assert torch.cuda.is_available(), \
		'no CUDA device visible to this torch (XCLASS_GPU_TEST_DEVICE=cpu rehearses the check on the CPU)'"
	@$(GPU_ENV) $(GPU_PY) -c "import yaml, tqdm, pytest" 2>/dev/null || { \
		echo "[xclass] unpacking $(GPU_WHEELS)/*.whl into $(GPU_DEPS)"; mkdir -p $(GPU_DEPS); \
		for w in $(GPU_WHEELS)/*.whl; do $(GPU_PY) -m zipfile -e $$w $(GPU_DEPS) || exit 1; done; }
	$(GPU_ENV) timeout $(GPU_TEST_TIMEOUT) $(GPU_PY) -m pytest -q -p no:cacheprovider -m gpu tests/gpu
	$(GPU_ENV) timeout $(GPU_BENCH_TIMEOUT) $(GPU_PY) tools/bench_gpu.py \
		$(if $(XCLASS_GPU_TEST_DEVICE),--device $(XCLASS_GPU_TEST_DEVICE) --quick) $(GPU_BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache
