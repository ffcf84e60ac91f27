# kernelstack: `make demo` (the kernel comparison) and `make test` (the test suite) on a fresh machine.
#
# .venv      Python >= 3.11 with torch (the CPU build 2.13.0 on CI machines), triton, the provider
#            SDKs and the report tools: everything but the Pallas kernels.
# .venv-jax  Python 3.12 with jax 0.11.2 and no torch: the Pallas (Mosaic GPU) kernels run there in
#            their CPU interpret mode and their Mosaic lowering is traced (jax 0.11 needs Python 3.12).

PYTHON    ?= python3
# The first python3.12 that runs (a pyenv shim can exist and still refuse to run).
PY312     ?= $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
               $$p -c '' 2>/dev/null && { command -v $$p; break; }; done)
VENV      := .venv
JAX_VENV  := .venv-jax
TORCH_SPEC ?= torch==2.13.0
JAX_SPEC  ?= jax==0.11.2 jaxlib==0.11.2
PIP_FLAGS := -q --disable-pip-version-check

.PHONY: demo test test-torch test-jax gpu-test clean

demo: $(VENV)/.installed
	$(VENV)/bin/python -m lora compare

test: test-torch test-jax

test-torch: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests --ignore=tests/pallas

test-jax: $(JAX_VENV)/.installed
	JAX_PLATFORMS=cpu $(JAX_VENV)/bin/python -m pytest tests/pallas

# On a CUDA machine that already has torch/triton/jax (the device tool): run from the source tree.
gpu-test:
	XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=. python3 -m pytest tests/gpu tests/lora

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) $(TORCH_SPEC)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[all,test]'
	touch $@

$(JAX_VENV)/.installed: pyproject.toml
	@test -n "$(PY312)" || { echo 'Python 3.12 not found (jax 0.11 needs it): make PY312=/path/to/python3.12'; exit 1; }
	test -x $(JAX_VENV)/bin/python || $(PY312) -m venv $(JAX_VENV)
	$(JAX_VENV)/bin/pip install $(PIP_FLAGS) $(JAX_SPEC) 'numpy>=1.26' 'pytest>=8' 'pytest-timeout>=2.3'
	touch $@

clean:
	rm -rf $(VENV) $(JAX_VENV) *.egg-info
