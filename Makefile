# Every target works on a fresh Debian machine as root: `setup` installs what is missing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
ZTB := $(VENV)/bin/ztb
APT_PACKAGES := wireguard-tools wireguard-go nftables iproute2 libnftables1 iputils-ping procps \
	chromium fonts-dejavu-core postgresql systemd busybox
STAMP := $(VENV)/.installed

.PHONY: setup test lint unit lab-test demo bench bench-quick screenshots clean lab-down dist

setup: $(STAMP)

$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "need root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat \
		-e '.[dev]'
	@touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -m "not lab" -q

lab-test: setup
	$(VENV)/bin/pytest -m lab -q

# The test command of the README and of CI: lint, then every test (lab tests need root).
test: lint
	$(VENV)/bin/pytest -q

demo: setup
	$(ZTB) lab demo

lab-down: setup
	$(ZTB) lab down

bench: setup
	$(PY) -m lab.bench --full

bench-quick: setup
	$(PY) -m lab.bench --quick

screenshots: setup
	$(VENV)/bin/pytest -q tests/web --screenshots docs/screenshots

# Wheel and sdist in dist/ (what `pip install` on a broker host or router takes).
dist: setup
	rm -rf dist
	$(PY) -m build --outdir dist .

clean:
	-$(ZTB) lab down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis bench-results.json *.egg-info dist
