# The two quickstart commands are `make demo` and `make test`; both run `make setup` first.
# Setup is idempotent: once done it only compares a stamp with the files it was made from.
PY ?= python3
VENV ?= .venv
STAMP := $(VENV)/.lss-setup-stamp
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	@PY=$(PY) VENV=$(VENV) bash scripts/setup.sh
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/lss demo

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check lss_cli tests benchmarks

bench: setup
	$(VENV)/bin/python benchmarks/train_step.py --tiny

clean:
	rm -rf $(VENV) runs .pytest_cache
