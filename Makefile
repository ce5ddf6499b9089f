# Two set-up commands for a fresh machine (README): `make test` and `make sweep`.
# Both create the virtual environment first (about 2 minutes and 6 GB: torch ships CUDA libraries).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install chromium test test-fast sweep benchmarks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The report.html integration test opens the page in headless Chromium. Debian's package is installed when it is
# missing and this runs as root (CI, a fresh container); otherwise this stops and says the one command to run.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Chromium for the report.html browser test (Debian package chromium)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "error: the report.html test needs Chromium: run 'sudo apt-get install -y chromium' (Debian/Ubuntu)"; \
	  exit 1; fi

# The whole suite: fast unit tests, then the integration tests that start real Ray and train real models.
# pytest exits 5 when it collected no test: that is reported as a failure, never as a silent pass.
test: $(STAMP) chromium
	@$(PY) -m pytest -q -m "not integration"; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no unit tests"; exit 1; fi; [ $$rc -eq 0 ] || exit $$rc
	@$(PY) -m pytest -q -m integration --durations=25; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no integration tests"; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

# The main job: a HIAST sweep on the embedded benchmark, selected by fused-vote F-mIoU, stored in ./results.
sweep: $(STAMP)
	$(PY) -m raysel.sweep hiast

clean:
	rm -rf results .pytest_cache
