# Two commands on a fresh machine (each does its own set-up):
#   make demo   segment a sample CT with the shipped demo weights; writes out/demo/{ctv.seg.nrrd,overlay.png}
#   make test   run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1: the pair segmentation-models-pytorch (research baselines) needs.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all test-slow venv venv-test benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.core-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.core-installed
	$(BIN)/python -m pip install -q -e '.[test,research]'
	touch $@

venv: $(VENV)/.core-installed
venv-test: $(VENV)/.test-installed

demo: venv
	$(BIN)/mnetim demo -o out/demo

# dciodvfy (Debian package dicom3tools) validates exported RTSTRUCTs; installed when we may.
dicom3tools:
	@command -v dciodvfy >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq dicom3tools >/dev/null) || echo "dicom3tools not installed: the dciodvfy check will be skipped"; }

test: venv-test dicom3tools
	$(BIN)/python -m pytest -q

# Slow checks (long training, large phantoms) and GPU checks are opt-in:
test-slow: venv-test
	$(BIN)/python -m pytest -q -m slow
test-gpu: venv-test
	$(BIN)/python -m pytest -q -m gpu

benchmark: venv
	$(BIN)/python benchmarks/benchmark.py

clean:
	rm -rf out .pytest_cache
