# One environment for every framework (see README "Set-up"). Python 3.10+ with venv and pip.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.senet-hub-installed

.PHONY: demo test test-fast lint format bench venv clean report-check

venv: $(STAMP)

# setuptools<81 and --no-build-isolation: chainer 7.8.1 only builds with the older setuptools.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt "setuptools>=77.0.3,<81" wheel
	$(PIP) install -q -c constraints.txt torch==2.13.0 numpy==1.26.4
	$(PIP) install -q --no-build-isolation -c constraints.txt -e ".[all,dev,test]"
	# consumers for the tests: --no-deps because they require torchvision, whose PyPI build
	# for torch 2.13 is CUDA-linked; tests/stubs/torchvision stands in (test-only)
	$(PIP) install -q --no-deps --no-build-isolation -c constraints.txt timm==1.0.31 pretrainedmodels==0.7.4 onnx2torch==1.5.15
	touch $@

demo: venv
	$(VENV)/bin/senet-hub demo

test: venv lint
	$(VENV)/bin/pytest -q

# about 6 minutes on a 2-core machine (5.8 measured): deselects tests marked slow in their file or listed, with
# their measured time, in tests/slow_tests.txt (tests/conftest.py applies the list)
test-fast: venv
	$(VENV)/bin/pytest -q -m "not slow"

# converters/ installs as senet_hub.converters (pyproject's package-dir), which an editable install
# cannot show mypy: it checks the package as installed through a tree of links under build/
MYPY_TREE := build/mypy-tree

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)/senet_hub
	for e in senet_hub/*; do ln -s "$(CURDIR)/$$e" $(MYPY_TREE)/senet_hub/; done
	ln -s "$(CURDIR)/converters" $(MYPY_TREE)/senet_hub/converters
	cd $(MYPY_TREE) && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir $(CURDIR)/.mypy_cache senet_hub

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: venv
	$(PY) bench/bench_convert.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache *.egg-info

# verify --html in a real headless browser (Debian's chromium; needs root for apt): renders the
# chart and the tables (tests/test_verify_report.py::test_report_renders_in_a_headless_browser)
report-check: venv
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	SENET_HUB_REQUIRE_BROWSER=1 $(VENV)/bin/pytest -q tests/test_verify_report.py
