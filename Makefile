# Developers and CI call the same targets. Every target sets up .venv first if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck bench fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xvatool demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/ruff check xvatool tests bench
	$(BIN)/ruff format --check xvatool tests bench
	$(BIN)/mypy

# The long fuzz run (issue 8): FUZZ_COUNT mutants, a fresh seed unless FUZZ_SEED is given.
FUZZ_COUNT ?= 20000
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz --count $(FUZZ_COUNT) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

bench: $(STAMP)
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/create.py
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/packages.py
	$(BIN)/python bench/repo.py --s3
	$(BIN)/python bench/nbd.py
	$(BIN)/python bench/incremental.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
