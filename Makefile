# scan_lightning: set-up, data, demo and tests. Every target installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DATA_DIR ?= data
FMNIST_RAW := $(DATA_DIR)/FashionMNIST/raw
DEBIAN_FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: help setup data demo test test-slow docs bench clean

help:
	@echo "make demo       set up, then train + evaluate the quickstart (Fashion-MNIST, CPU, < 10 min)"
	@echo "make test       set up, then lint (ruff), type-check (mypy), build the docs (--strict) and run the test suite (slow tests excluded)"
	@echo "make test-slow  only the tests marked slow"
	@echo "make setup      create $(VENV) and install scan_lightning[dev] (editable)"
	@echo "make data       install the Fashion-MNIST IDX files into $(FMNIST_RAW)"
	@echo "make docs       set up, then build the documentation site into site/ (mkdocs, --strict)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=77" wheel
	$(PIP) install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# Debian's dataset-fashion-mnist where apt exists; otherwise torchvision's download into $(DATA_DIR).
$(FMNIST_RAW)/t10k-labels-idx1-ubyte: | $(VENV)/.installed
	@if [ ! -f $(DEBIAN_FMNIST)/t10k-labels-idx1-ubyte.gz ] && command -v apt-get >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; \
	fi
	$(PY) -c "from scan_lightning.data.fashion_mnist import ensure_files; print(ensure_files('$(DATA_DIR)'))"

data: $(FMNIST_RAW)/t10k-labels-idx1-ubyte

demo: setup data
	$(PY) -m scan_lightning.train

test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir build/site
	$(PY) -m pytest -q

test-slow: setup data
	$(PY) -m pytest -q -m slow

docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) build dist site src/*.egg-info
