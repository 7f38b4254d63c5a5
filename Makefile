# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned BLAS threads: the implicit solvers' small LU factorisations slow down badly when threads contend.
export OPENBLAS_NUM_THREADS ?= 1
export OMP_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg

# Tests run on every core, one test file per worker (a file's module fixtures, e.g. its Dask cluster, stay shared).
.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/dlnode demo --overwrite

test: $(BIN)/.installed
	$(BIN)/ruff check dlnode tests benchmarks studies
	$(BIN)/ruff format --check dlnode tests benchmarks studies
	$(BIN)/python -m pytest -q -n auto --dist loadfile

lint: $(BIN)/.installed
	$(BIN)/ruff check --fix dlnode tests benchmarks studies
	$(BIN)/ruff format dlnode tests benchmarks studies

clean:
	rm -rf $(VENV) data/arora2019.nc figures/arora2019-*.png .pytest_cache
