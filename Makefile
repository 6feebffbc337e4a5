# Two commands set everything up on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/demo

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	# ecgxai pins ancient versions of everything; only its torch modules are used.
	$(PY) -m pip install -q --no-deps 'ecgxai==0.1.1'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m factorecg_jax.main --config=configs/demo.py --workdir=$(WORKDIR) --mode=demo

# pytest's exit code 5 (no tests collected) is a failure too.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist=loadfile --no-loadscope-reorder --durations=25 tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo 'no tests collected' >&2; exit 1; fi; \
	  exit $$rc

bench: $(STAMP)
	for f in experiments/benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
