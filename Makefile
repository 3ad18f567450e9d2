# The two commands of the README: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
DEMO_CATALOG := data/demo/catalog.jsonl

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-index serve test bench eval clean

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

demo: demo-index
	@echo "Serving the demo catalog on http://$(HOST):$(PORT)/v1/search?q=pla+filament"
	$(BIN)/vitrine serve --host $(HOST) --port $(PORT)

serve: install
	$(BIN)/vitrine serve --host $(HOST) --port $(PORT)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/bench_build.py --record
	$(BIN)/python bench/bench_search.py --record
	$(BIN)/python bench/bench_shoppers.py --record

eval: install
	$(BIN)/vitrine eval search --dataset crowdflower

clean:
	rm -rf $(VENV) indexes/v* indexes/current indexes/cache indexes/models indexes/jobs
