# Two commands work on a fresh clone (see README):
#   make demo   install into .venv, then run `veil demo` on the embedded PostgreSQL
#   make test   install into .venv (and firejail), then run the whole test suite
#               (PYTEST_ARGS=tests/conformance runs a part of it)
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# firejail (the sandbox) and the unprivileged user sandboxes run as; needs root or sudo.
system-deps:
	@command -v firejail >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq firejail; }

# execute_code (step 5) needs root, firejail and the sandbox user: installed here when run as root.
demo: $(STAMP)
	@if [ "$$(id -u)" = 0 ]; then \
		$(MAKE) --no-print-directory system-deps && $(VENV)/bin/python -m veil.sandbox.setup; \
	else \
		echo "note: execute_code (step 5) needs root, firejail and the sandbox user; 'sudo make demo' installs them and runs the demo"; \
	fi
	$(VENV)/bin/veil demo

test: $(STAMP) system-deps
	$(VENV)/bin/python -m veil.sandbox.setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=20 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check veil tests migrations examples bench
	$(VENV)/bin/ruff format --check veil tests migrations examples bench
	$(VENV)/bin/mypy
