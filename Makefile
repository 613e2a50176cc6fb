# narrator: every target sets up its own virtual environment from pyproject.toml first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck pytest bench soak clean browser conformance lines

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/narrator demo

browser:
	@command -v chromium >/dev/null 2>&1 || ( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null )

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy tests/bench

pytest: $(STAMP) browser
	$(BIN)/pytest

test: lint typecheck pytest

# Everything but the tests marked slow (process kills, soak-like and long end-to-end runs),
# on FAST_WORKERS processes (pytest-xdist; each has its own redis-server and simulated VLM).
FAST_WORKERS ?= 2
test-fast: $(STAMP) browser
	$(BIN)/pytest -m "not slow" -n $(FAST_WORKERS)

# Python lines per module, then per package (narrator/* counted per sub-package).
lines:
	@git ls-files '*.py' | xargs wc -l | grep -v ' total$$' | sort -k2
	@git ls-files '*.py' | xargs wc -l | grep -v ' total$$' | awk '{ n = split($$2, p, "/"); \
	  k = (p[1] == "narrator" && n > 2) ? p[1] "/" p[2] : (n > 1 ? p[1] : "(top level)"); \
	  s[k] += $$1 } END { for (k in s) printf "%7d  %s\n", s[k], k }' | sort -k2

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run_all

soak: $(STAMP)
	$(BIN)/python -m tests.bench.soak

# Real vLLM (CPU build) end to end; its own venv and model under ~/.cache/narrator/conformance.
# Not part of `make test`; see docs/CONFORMANCE.md.
conformance: $(STAMP)
	$(BIN)/python -m conformance.run

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
