# kernelstack: `make demo` (the kernel comparison) and `make test` (the test suite) on a fresh machine.
#
# Every venv is installed from a lock (lock/*.txt, made by `make lock` with uv from lock/*.in and
# pyproject.toml's extras, hashes checked), so the same clone installs the same versions next month:
#
# .venv-tools  uv itself (lock/tools.txt, installed by pip): the installer of the venvs below.
# .venv        Python >= 3.11 with torch (the CPU build 2.13.0 from TORCH_FIND_LINKS), triton, the
#              provider SDKs and the report tools (lock/main.txt): everything but the Pallas kernels.
# .venv-jax    Python 3.12 with jax 0.11.2 and no torch (lock/jax.txt): the Pallas (Mosaic GPU) kernels
#              run there in their CPU interpret mode and their Mosaic lowering is traced.
# .venv-sglang SGLang's frontend (sglang.lang, installed without its GPU serving stack: lock/sglang-nodeps.txt)
#              beside what it imports and our providers' SDKs (lock/sglang.txt): tests/sglang_frontend runs
#              real @sgl.function programs on our backends from the checkout (PYTHONPATH=.).
#
# `make test-latest` builds .venv-latest / .venv-jax-latest from the ranges alone (the newest versions
# they admit, what `pip install kernelstack[all]` gives a user today) and runs the same suite there.

PYTHON    ?= python3
# The first python3.12 that runs (a pyenv shim can exist and still refuse to run).
PY312     ?= $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
               $$p -c '' 2>/dev/null && { command -v $$p; break; }; done)
# Where the CPU build of torch lies (these machines keep it on disk; PyPI's torch is a CUDA build).
TORCH_FIND_LINKS ?= /opt/wheels
# jax for test-latest: the range of pyproject.toml's pallas extra (that extra also pulls torch's core deps).
JAX_RANGE := 'jax>=0.11.2,<0.12' 'jaxlib>=0.11.2,<0.12'
# torch for test-latest: kept at the locked CPU build (the newest PyPI torch is a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0+cpu
VENV      := .venv
JAX_VENV  := .venv-jax
SGL_VENV  := .venv-sglang
TOOLS     := .venv-tools
UV        := $(TOOLS)/bin/uv
# `make lock UPGRADE=1` re-resolves everything to the newest versions; plain `make lock` keeps the
# pins that still satisfy the inputs and only adds or moves what an input change needs.
UPGRADE   ?=
LOCK_FLAGS = --generate-hashes --quiet --custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
SYNC_FLAGS = --require-hashes --find-links $(TORCH_FIND_LINKS)

.PHONY: demo test test-torch test-jax test-sglang test-latest lock gpu-test clean

demo: $(VENV)/.installed
	$(VENV)/bin/python -m lora compare

test: test-torch test-jax test-sglang

test-torch: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests --ignore=tests/pallas --ignore=tests/sglang_frontend

test-jax: $(JAX_VENV)/.installed
	JAX_PLATFORMS=cpu $(JAX_VENV)/bin/python -m pytest tests/pallas

test-sglang: $(SGL_VENV)/.installed
	PYTHONPATH=. $(SGL_VENV)/bin/python -m pytest tests/sglang_frontend

# On a CUDA machine that already has torch/triton/jax (the device tool): run from the source tree.
gpu-test:
	XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. python3 -m pytest tests/gpu tests/lora

$(UV): lock/tools.txt
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --disable-pip-version-check --require-hashes -r lock/tools.txt
	touch $@

$(VENV)/.installed: lock/main.txt pyproject.toml $(UV)
	test -x $(VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(VENV)
	@echo "== $(VENV): installing the locked versions of lock/main.txt (uv pip sync, hashes checked)"
	$(UV) pip sync -q --python $(VENV)/bin/python $(SYNC_FLAGS) lock/main.txt
	$(UV) pip install -q --python $(VENV)/bin/python --no-deps --no-build-isolation -e . -e tests/lora/plugin_example
	@$(UV) pip list -q --python $(VENV)/bin/python 2>/dev/null | \
	  grep -E '^(torch|triton|numpy|openai|anthropic|litellm|google-genai|httpx) ' | sed 's/^/   locked: /'
	touch $@

$(JAX_VENV)/.installed: lock/jax.txt $(UV)
	@test -n "$(PY312)" || { echo 'Python 3.12 not found (jax 0.11 needs it): make PY312=/path/to/python3.12'; exit 1; }
	test -x $(JAX_VENV)/bin/python || $(UV) venv -q --python $(PY312) $(JAX_VENV)
	@echo "== $(JAX_VENV): installing the locked versions of lock/jax.txt (uv pip sync, hashes checked)"
	$(UV) pip sync -q --python $(JAX_VENV)/bin/python --require-hashes lock/jax.txt
	@$(UV) pip list -q --python $(JAX_VENV)/bin/python 2>/dev/null | \
	  grep -E '^(jax|jaxlib|numpy) ' | sed 's/^/   locked: /'
	touch $@

$(SGL_VENV)/.installed: lock/sglang.txt lock/sglang-nodeps.txt $(UV)
	test -x $(SGL_VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(SGL_VENV)
	@echo "== $(SGL_VENV): installing the locked versions of lock/sglang.txt + lock/sglang-nodeps.txt (no deps)"
	$(UV) pip sync -q --python $(SGL_VENV)/bin/python $(SYNC_FLAGS) lock/sglang.txt lock/sglang-nodeps.txt
	@$(UV) pip list -q --python $(SGL_VENV)/bin/python 2>/dev/null | grep -E '^(sglang|openai|litellm) ' | sed 's/^/   locked: /'
	touch $@

# Regenerate the locks from lock/*.in and pyproject.toml (for the Python each venv runs).
lock: $(UV)
	$(UV) pip compile $(LOCK_FLAGS) --python-version 3.11 --find-links $(TORCH_FIND_LINKS) \
	  lock/main.in pyproject.toml --extra all --extra test -o lock/main.txt
	$(UV) pip compile $(LOCK_FLAGS) --python-version 3.12 lock/jax.in -o lock/jax.txt
	$(UV) pip compile $(LOCK_FLAGS) --python-version 3.11 --find-links $(TORCH_FIND_LINKS) lock/sglang.in -o lock/sglang.txt
	$(UV) pip compile $(LOCK_FLAGS) --python-version 3.11 --no-deps lock/sglang-nodeps.in -o lock/sglang-nodeps.txt
	$(UV) pip compile $(LOCK_FLAGS) lock/tools.in -o lock/tools.txt

# The suite against the newest versions the ranges admit (fresh venvs each time, no lock). Tests
# marked `tracks_upstream` follow a named upstream change and are the only ones allowed to fail here.
# (tests/sglang_frontend stays on its pinned sglang: newer releases import torch from `import sglang`.)
test-latest: $(UV)
	rm -rf .venv-latest .venv-jax-latest
	$(UV) venv -q --python $(PYTHON) .venv-latest
	$(UV) pip install -q --python .venv-latest/bin/python --find-links $(TORCH_FIND_LINKS) \
	  '$(TORCH_SPEC)' -e '.[all,test]'
	@$(UV) pip list -q --python .venv-latest/bin/python | sed 's/^/   latest: /'
	$(UV) venv -q --python $(PY312) .venv-jax-latest
	$(UV) pip install -q --python .venv-jax-latest/bin/python $(JAX_RANGE) \
	  'numpy>=1.26' 'pytest>=8' 'pytest-timeout>=2.3'
	@$(UV) pip list -q --python .venv-jax-latest/bin/python | grep -E '^(jax|jaxlib|numpy) ' | sed 's/^/   latest: /'
	.venv-latest/bin/python -m pytest tests --ignore=tests/pallas --ignore=tests/sglang_frontend
	JAX_PLATFORMS=cpu .venv-jax-latest/bin/python -m pytest tests/pallas

clean:
	rm -rf $(VENV) $(JAX_VENV) $(SGL_VENV) $(TOOLS) .venv-latest .venv-jax-latest *.egg-info
