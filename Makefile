# leukoscope — every target creates or reuses .venv itself.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
DATA   ?= ../shared/data/ALL
IMAGES ?= $(DATA)
PORT   ?= 8000
LIMIT  ?= 32
# make test: pytest-xdist workers; --dist loadfile keeps each test file on one worker (its fixtures are shared)
TEST_WORKERS ?= 2
# glibc malloc settings: PyTorch on CPU reallocates large buffers every batch, and keeping them on the heap
# instead of returning them to the kernel makes training ~1.5x faster on a 2-core machine. Every
# leukoscope command also applies them itself (leukoscope.runtime, mallopt), so typed commands match;
# kept here for child tools that are not leukoscope entry points (benchmark children, plain python).
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 1073741824

.PHONY: run predict test test-fast bench lint model venv clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is needed)"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# an editable install leaves src/ without bytecode; where PYTHONDONTWRITEBYTECODE is set (many container
	@# images), every command would otherwise compile leukoscope's modules again (~0.2-0.5 s of each start)
	$(PY) -m compileall -q src
	touch $(STAMP)

venv: $(STAMP)

## make run: serve the web app on the bundled model (http://127.0.0.1:8000; Ctrl-C stops it)
run: $(STAMP)
	$(VENV)/bin/leukoscope info
	$(VENV)/bin/leukoscope serve --host 127.0.0.1 --port $(PORT)

## make predict: the command-line reader on the bundled model (IMAGES=... to choose what to read)
predict: $(STAMP)
	$(VENV)/bin/leukoscope predict $(IMAGES) --limit $(LIMIT)

## make test: lint (ruff, import layers), then the whole test suite (the example notebook included; the store
## tests on SQLite and on a throwaway PostgreSQL cluster, installed from Debian's packages when missing and root)
test: $(STAMP)
	bash scripts/ensure_browser.sh || true
	bash scripts/ensure_postgres.sh || true
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

## make test-fast: lint, then the suite without the tests marked slow (subprocess training, browser, fuzzing, the example notebook)
test-fast: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts examples
	$(VENV)/bin/lint-imports

## make model: rebuild the bundled model package on this CPU
model: $(STAMP)
	$(PY) scripts/build_bundled_model.py --data $(DATA) --device cpu

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
