# Set-up, tests and the main job. `make demo DATA=DIR` and `make test` create .venv and install on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= $(LANDMARKS_DATA)
PRESET ?= glr
RUN    ?= runs/demo-$(PRESET)

.PHONY: install test test-fast demo bench browser-deps clean web
.DEFAULT_GOAL := install

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The live page's JavaScript runtime (npm's onnxruntime-web, pinned in package-lock.json), copied into the
# package (src/landmarks/web/ort, git-ignored); the files are listed once, in src/landmarks/web/runtime-files.txt.
NPM         := $(shell command -v npm 2>/dev/null)
WEB_RUNTIME := src/landmarks/web/ort/.installed
ORT_FILES   := $(shell grep -v "^\#" src/landmarks/web/runtime-files.txt)

$(WEB_RUNTIME): package.json package-lock.json src/landmarks/web/runtime-files.txt
	npm ci --no-audit --no-fund --loglevel=error
	mkdir -p $(dir $@)
	cd node_modules/onnxruntime-web/dist && cp $(ORT_FILES) $(CURDIR)/$(dir $@)
	touch $@

web: $(WEB_RUNTIME)

install: $(STAMP) $(if $(NPM),$(WEB_RUNTIME))
ifeq ($(NPM),)
	@echo "npm not found: all installed except the live page's runtime; install Node.js 20 and npm, then run make web."
endif

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

demo: install
	@if [ -z "$(DATA)" ]; then \
	  echo "make demo needs photos: DATA=DIR, a folder of class subfolders (DIR/<landmark name>/*.jpg) or a GLDv2/Kaggle folder with train.csv (e.g. DATA=../shared/data/landmarks-mini, or GLDv2: .venv/bin/landmarks download gldv2 --split train --shards 0-4 --metadata --out DIR, then landmarks sample --data DIR --classes 500 --per-class 40 --out DATA), or set LANDMARKS_DATA." >&2; \
	  exit 2; fi
	@test -d "$(DATA)" || { echo "make demo: DATA=$(DATA) is not a folder." >&2; exit 2; }
	rm -rf $(RUN)
	$(VENV)/bin/landmarks train --data $(DATA) --config $(PRESET) --out $(RUN)
	@if [ -f "$(DATA)/test.csv" ]; then \
	  $(VENV)/bin/landmarks evaluate $(RUN) --data $(DATA) && \
	  $(VENV)/bin/landmarks submit $(RUN) --data $(DATA) --out $(RUN)/submission.csv; \
	else echo "$(DATA) has no test.csv: metrics are on the held-out split only, no submission written."; fi
	@echo; echo "run folder:  $(RUN)"; echo "metrics:     $(RUN)/metrics.json and $(RUN)/evaluation/"; \
	  echo "plots:       $(RUN)/plots/ (curves, augmentations, predictions)"; \
	  test -f $(RUN)/submission.csv && echo "submission:  $(RUN)/submission.csv" || true

# Debian's Chromium for the end-to-end browser test (skipped without it).
browser-deps:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null; }; }

bench: install
	$(PY) benchmarks/bench_presets.py --write

clean:
	rm -rf runs .pytest_cache
