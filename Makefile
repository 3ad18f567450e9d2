# The two commands of the README: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
# pytest processes (pytest-xdist): 2 halves the suite's wall time on the 2-core CI machine, where much of a
# test's time is spent waiting on the servers, builds and browsers it starts; 0 runs it in this process.
TEST_WORKERS ?= 2
DEMO_CATALOG := data/demo/catalog.jsonl
DEMO_EVENTS  := data/demo/events.csv.gz

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install chromium postgresql demo demo-index demo-events serve check test bench eval clean

install: $(STAMP)

# torch is pinned (2.13.0, CPU wheel on this machine's disk) and installed first, so that nothing
# else can pull a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo-index: install
	$(BIN)/vitrine build --catalog $(DEMO_CATALOG)

# Real shoppers of the demo catalog (data/demo/SOURCE.md); importing twice stores nothing new.
demo-events: demo-index
	$(BIN)/vitrine events import $(DEMO_EVENTS)

# The admin page needs an admin key: the demo makes one (instance/demo-admin-key) unless
# VITRINE_ADMIN_KEY is set. The demo turns on the "shopping as" menu of real shoppers (demo_shopper_menu).
demo: demo-events
	@mkdir -p instance
	@test -s instance/demo-admin-key || $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(18))" > instance/demo-admin-key
	@echo "Storefront: http://$(HOST):$(PORT)/    Admin: http://$(HOST):$(PORT)/admin  (admin key: $${VITRINE_ADMIN_KEY:-$$(cat instance/demo-admin-key)})"
	VITRINE_DEMO_SHOPPER_MENU=$${VITRINE_DEMO_SHOPPER_MENU:-1} VITRINE_ADMIN_KEY=$${VITRINE_ADMIN_KEY:-$$(cat instance/demo-admin-key)} $(BIN)/vitrine serve --host $(HOST) --port $(PORT)

serve: install
	$(BIN)/vitrine serve --host $(HOST) --port $(PORT)

# The browser tests drive Debian's Chromium (tests/test_browser.py); installed here when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The PostgreSQL event store's tests run on a throwaway server (scripts/pg_throwaway.sh: initdb and pg_ctl
# in a temp folder) from Debian's packages; installed here when missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  echo "installing Debian's postgresql for the event store tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }

# Static checks, before the tests: mypy (strict, configured in pyproject.toml's [tool.mypy]) and the
# import contracts of [tool.importlinter] (engine never imports web; engine's layers point down;
# web uses only engine's public names).
check: install
	$(BIN)/mypy
	$(BIN)/lint-imports

# pytest runs with VITRINE_TEST_PG_URL pointing at a throwaway PostgreSQL, stopped afterwards (even on failure).
test: install check chromium postgresql
	scripts/pg_throwaway.sh run -- $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal

bench: install
	$(BIN)/python bench/bench_build.py --record
	$(BIN)/python bench/bench_search.py --record
	$(BIN)/python bench/bench_shoppers.py --record
	$(BIN)/python bench/bench_pages.py --record

eval: install
	$(BIN)/vitrine eval search --dataset crowdflower

clean:
	rm -rf $(VENV) indexes/v* indexes/current indexes/cache indexes/models indexes/jobs
