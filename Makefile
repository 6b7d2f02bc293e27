# `make demo` and `make test` set up .venv themselves (idempotently) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= tf,test,ray
comma  := ,
# Re-install whenever pyproject.toml (or the extras) change.
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-10)-$(subst $(comma),_,$(EXTRAS))

# onnxruntime-training (oracle 2, optional builder) lives in its own venv: it installs into the
# same onnxruntime/ folder as onnxruntime and would break the main one. No cp312 wheels exist.
ORT_VENV := .venv-ort-training

.PHONY: demo test test-zoo test-extended lint bench venv clean chromium

# The Node and browser examples' tests need their npm packages (from the committed lockfiles)
# and Debian's Chromium (a test tool's own browser download cannot work here).
NPM_NODE := examples/node/node_modules/.package-lock.json
NPM_WEB  := examples/web/node_modules/.package-lock.json

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
	$(VENV)/bin/onnx-gradcam run models/demo.onnx models/samples -o demo-out --top-k 2 --save-npy \
	  --overwrite
	$(VENV)/bin/onnx-gradcam run models/demo.onnx models/samples -o demo-out/methods --method all \
	  --grid --quiet --overwrite
	@echo "demo: overlays and report.json are in demo-out/, the method grids in demo-out/methods/"

$(ORT_VENV)/.installed:
	$(PYTHON) -m venv $(ORT_VENV)
	$(ORT_VENV)/bin/pip install -q onnxruntime-training-cpu==1.19.2
	$(ORT_VENV)/bin/python -c "from onnxruntime.capi._pybind_state import GradientGraphBuilder"
	@touch $@

$(NPM_NODE): examples/node/package-lock.json
	cd examples/node && npm ci --no-audit --no-fund
$(NPM_WEB): examples/web/package-lock.json
	cd examples/web && npm ci --no-audit --no-fund
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(STAMP) $(ORT_VENV)/.installed $(NPM_NODE) $(NPM_WEB) chromium
	$(PY) -m ruff check .
	$(PY) -m pytest

test-zoo: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider tests/zoo

# The production-path gradient tests with the library's sessions at ORT_ENABLE_EXTENDED (no
# NCHWc kernels); the oracle tests check both levels in any run.
test-extended: $(STAMP)
	ONNX_GRADCAM_TEST_ORT_LEVEL=ORT_ENABLE_EXTENDED $(PY) -m pytest -p no:cacheprovider \
	  tests/test_oracle.py tests/test_torch_parity.py tests/zoo

bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/export_overhead.py

clean:
	rm -rf $(VENV) $(ORT_VENV) demo-out .pytest_cache
