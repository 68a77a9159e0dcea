# `make test` is the one command a newcomer (and CI) runs: it builds .venv when pyproject.toml
# changes, then lints and runs the whole suite.
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

.PHONY: install test lint check-image browser
install: $(VENV)/.installed

# Debian's chromium for the editor's browser test (Playwright drives it; it never downloads a browser). Installed
# only when missing, and only as root (CI and a fresh machine run `make test` as root); where it cannot be
# installed the browser test skips and says why.
browser:
	@[ -x /usr/bin/chromium ] || [ "$$(id -u)" != 0 ] || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "make: chromium could not be installed; the editor's browser test will skip"

lint: install
	$(VENV)/bin/ruff check .

test: install lint browser
	$(VENV)/bin/pytest

# The GPU image's pip steps resolved against PyPI (dry runs, about two minutes): no step moves a pin.
check-image: install
	$(VENV)/bin/pytest -q tests/check_image_pins.py

.PHONY: serve
serve: install
	$(VENV)/bin/comfy-saas serve
