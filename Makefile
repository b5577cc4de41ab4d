# nichekd: two commands do all set-up on a fresh clone.
#   make demo   install into .venv, run the pipeline on the embedded synthetic tissue
#   make test   install with the dev extra, lint (ruff check, ruff format --check), run the test suite
# TORCH selects the torch requirement; CI pins the CPU wheel (torch==2.13.0).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
TORCH  ?= torch
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed

.PHONY: install demo test lint docs bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,notebooks,docs,scvi]" "$(TORCH)"
	# timm declares torchvision, whose wheel would replace the torch build: nichekd never imports it
	$(PIP) install -q --no-deps "timm>=1.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m nichekd.demo --out demo_output

# lint first: a style or import error fails in seconds instead of after the suite
test: lint
	$(PY) -m pytest -n 2 --dist load tests

lint: $(STAMP)
	$(PY) -m ruff check nichekd tests benchmarks
	$(PY) -m ruff format --check nichekd tests benchmarks

docs: $(STAMP)
	$(PY) -m sphinx -W -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
