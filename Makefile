# `make demo` and `make test` set up .venv themselves (idempotently) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= tf,test
comma  := ,
# Re-install whenever pyproject.toml (or the extras) change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-10)-$(subst $(comma),_,$(EXTRAS))

# onnxruntime-training (oracle 2, optional builder) lives in its own venv: it installs into the
# same onnxruntime/ folder as onnxruntime and would break the main one. No cp312 wheels exist.
ORT_VENV := .venv-ort-training

.PHONY: demo test test-zoo lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@# onnxruntime, onnxruntime-gpu and onnxruntime-training share one folder: exactly one allowed
	@n=$$($(PY) -m pip list 2>/dev/null | grep -ciE '^onnxruntime(-gpu|-training|-training-cpu)? '); \
	  if [ "$$n" != "1" ]; then echo "error: $$n onnxruntime distributions in $(VENV) (need exactly one):"; \
	  $(PY) -m pip list 2>/dev/null | grep -iE '^onnxruntime'; exit 1; fi
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/onnx-gradcam run models/demo.onnx models/samples -o demo-out --top-k 2 --save-npy
	@echo "demo: overlays and report.json are in demo-out/"

$(ORT_VENV)/.installed:
	$(PYTHON) -m venv $(ORT_VENV)
	$(ORT_VENV)/bin/pip install -q onnxruntime-training-cpu==1.19.2
	$(ORT_VENV)/bin/python -c "from onnxruntime.capi._pybind_state import GradientGraphBuilder"
	@touch $@

test: $(STAMP) $(ORT_VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest

test-zoo: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider -o addopts="" tests/zoo

bench: $(STAMP)
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) $(ORT_VENV) demo-out .pytest_cache
