# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install the pinned
# dependencies first (torch==2.13.0 CPU; nothing is downloaded at run time).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

# A venv whose creation stopped half-way (Debian/Ubuntu without python3-venv: "ensurepip is not available", or
# Ctrl-C) has bin/python but no pip: `test -x bin/python` took it for done and every later make failed with
# "No module named pip". Keyed on bin/pip, a rerun finishes it (venv over an existing folder keeps its packages).
$(VENV)/bin/pip:
	@$(PYTHON) -c "import sys; sys.exit(sys.version_info < (3, 11))" || { \
	  echo "hmrcritic needs Python >= 3.11 and $(PYTHON) is missing or older: run make PYTHON=python3.11 (or newer)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.lock pyproject.toml | $(VENV)/bin/pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c "import torch; assert torch.version.cuda is None, 'a CUDA torch was installed; torch must be pinned to 2.13.0 (CPU)'"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hmrcritic demo

# Test files run in TEST_WORKERS processes (pytest-xdist; a file's tests stay in one process, so its module
# fixtures are built once): 2 halves the suite's time on a 2-core machine (CI's). TEST_WORKERS=0 runs them serially.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check hmrcritic tests benchmarks

# each with the arguments README.md cites for its figures (some defaults differ), so a `make bench` re-measures
# what the docs quote instead of overwriting it with another configuration
bench: $(STAMP)
	$(PY) benchmarks/bench_foundation.py --threads 1
	$(PY) benchmarks/bench_diffusion.py --threads 1 --inputs 4
	$(PY) benchmarks/bench_agent.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_text_embedding.py
	$(PY) benchmarks/bench_scrub.py
	$(PY) benchmarks/bench_vlm.py
	$(PY) benchmarks/bench_vlm_request.py
	$(PY) benchmarks/bench_explore.py
	$(PY) benchmarks/bench_export.py --inputs 4
	$(PY) benchmarks/bench_alignment.py --steps 4 --threads 1
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_userdata.py --entries 100

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
