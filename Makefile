# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Which faiss build the venv gets: cpu (default) or gpu (`make install-gpu` on a CUDA machine).
FAISS  ?= $(shell cat $(VENV)/.faiss 2>/dev/null || echo cpu)
STAMP  := $(VENV)/.installed-$(FAISS)

.PHONY: install install-gpu check-gpu demo test test-all lint bench clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Re-install when pyproject.toml or the faiss choice changes. The dev venv takes the optional
# `reference` extra (dlib's face descriptor) so that its tests run. faiss-cpu and the GPU build share
# the faiss/ package, so every faiss build is removed before the chosen one goes in.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip uninstall --quiet -y faiss-cpu faiss-gpu faiss-gpu-cu12 faiss-gpu-cu11 2>/dev/null || true
	$(PY) -m pip install --quiet -e '.[$(FAISS),reference,dev]'
	rm -f $(VENV)/.installed-*
	echo $(FAISS) > $(VENV)/.faiss
	touch $(STAMP)

install: $(STAMP)

install-gpu:
	$(MAKE) install FAISS=gpu
	$(PY) -m semiface.faiss_backend

check-gpu: $(STAMP)
	$(PY) -m semiface.faiss_backend

demo: $(STAMP)
	$(PY) -m flows.demo

# The suite runs on TEST_WORKERS processes (pytest-xdist), a test file per process at a time: module
# fixtures are built once, and on 2 cores the default run takes about 7 min.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -m '' -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-venv:
	rm -rf $(VENV)
