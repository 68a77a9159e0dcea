# `make test` is the one command a newcomer (and CI) runs: it builds .venv when pyproject.toml
# changes, then lints and runs the whole suite.
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install test lint check-image
install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(VENV)/bin/pytest

# The GPU image's pip steps resolved against PyPI (dry runs, about two minutes): no step moves a pin.
check-image: install
	$(VENV)/bin/pytest -q tests/check_image_pins.py

.PHONY: serve
serve: install
	$(VENV)/bin/comfy-saas serve
