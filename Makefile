# Every target builds on `venv`: a fresh clone needs nothing but python3 and make.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv proto lint test test-fast bench demo sysdeps clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "$(PYTHON) cannot make a virtualenv with pip: install python3-venv (Debian: apt-get install -y python3-venv)" >&2; exit 1; }
	test -x $(VENV)/bin/pip || $(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

sysdeps:
	bash infra/scripts/ensure-system-deps.sh

proto: venv
	$(PY) scripts/gen_protos.py

lint: venv
	bash infra/scripts/ensure-system-deps.sh npm
	$(PY) scripts/gen_protos.py --check
	set -o pipefail; buf=$$(bash infra/scripts/ensure-buf.sh | tail -n 1) && \
		(cd protos && "$$buf" lint) && bash scripts/check_proto_breaking.sh "$$buf"
	$(VENV)/bin/ruff check libs services tests scripts
	$(VENV)/bin/ruff format --check libs services tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests scripts
	bash scripts/check_compose.sh

# Two workers (pytest-xdist), each test file on one of them: most of the suite's time is
# spent waiting on whole process trees, so two at once fill a 2-vCPU machine.
TEST_WORKERS ?= 2

test: venv sysdeps
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

test-fast: venv
	$(VENV)/bin/pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

bench: venv sysdeps
	$(PY) scripts/bench.py

demo: venv
	$(VENV)/bin/mosaic demo

clean:
	rm -rf $(VENV) .cache .bench .pytest_cache .mypy_cache .ruff_cache
