# Everything the project needs is installed from here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv data browser demo test lint bench clean

venv: $(STAMP)

# torch/torchvision first, pinned to the builds on local disk, so nothing pulls a multi-GB build from the network.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Zalando's Fashion-MNIST from Debian's dataset-fashion-mnist package, installed when missing.
data: $(FMNIST_DIR)/train-images-idx3-ubyte.gz

$(FMNIST_DIR)/train-images-idx3-ubyte.gz:
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

# A quick look at the whole recipe (configs/demo.yaml, sized for a few minutes on 2 CPU cores): its table, then its
# report. The full CPU recipe is `lossguided run cpu-small --out runs/cpu-small`.
demo: venv data
	$(BIN)/lossguided run demo --out runs/demo
	@$(BIN)/lossguided report runs/demo --out runs/demo/report.html >/dev/null
	@echo "report: runs/demo/report.html (open it in a browser: stages, curves, losses, suspected wrong labels)"
	@echo "this was a quick look (6,000 images, short epochs, one refinement round); the full CPU recipe:"
	@echo "  $(BIN)/lossguided run cpu-small --out runs/cpu-small"

# Headless Chromium (Debian's chromium) for the report's browser test; where apt cannot install it, the test is
# skipped with the reason.
browser:
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; } \
		|| echo "make browser: could not install chromium; the browser test will be skipped"

# pytest exits 5 when it collects no test: say so instead of failing without a reason.
test: venv data browser
	@$(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 0; fi; exit $$rc

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: venv data
	$(BIN)/python benchmarks/record_overhead.py
	$(BIN)/python benchmarks/select_scale.py
	$(BIN)/python benchmarks/report_page_size.py
	$(BIN)/python benchmarks/input_pipeline.py

clean:
	rm -rf runs .pytest_cache
