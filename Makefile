# Set-up is part of every target, so each works on a fresh machine.
# CPU torch by default (a wheel of torch 2.13.0 lies on this project's machines);
# GPU users: make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126" or any torch >= 2.1.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check $(TORCH) -e '.[dev]'
	touch $@

.PHONY: setup demo test bench
setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/biounet demo --out demo-out

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/isbi2012.py
	$(VENV)/bin/python benchmarks/dsb2018.py
	$(VENV)/bin/python benchmarks/inference.py
