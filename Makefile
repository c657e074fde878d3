# Two commands on a fresh machine:  `make demo` (the whole study on the embedded default) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch and torchvision must be installed first, as this exact pair (see README, "Two commands on a fresh machine").
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-all bench lock clean ui

$(STAMP): pyproject.toml requirements/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "Error: $(PYTHON) not found; install Python 3.11 or set PYTHON=..." >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PAIR)
	$(PIP) install --quiet -c requirements/constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fmri2img ablate --config projects/imagery/configs/ablation.yaml --jobs 2

# pytest exits 5 when it collects no tests: that must fail, not pass silently.
test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "Error: pytest collected no tests." >&2; exit 1; fi; exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PIP) install --quiet -c requirements/constraints.txt -e ".[test,bench]"
	$(PY) benchmarks/bench_ridge.py
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_demo.py

ui: $(STAMP)
	$(VENV)/bin/fmri2img ui --compare

lock: $(STAMP)
	$(PIP) freeze --exclude-editable | grep -v '^fmri2img' > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt

clean:
	rm -rf data/synthetic data/indices cache outputs checkpoints mlruns mlflow.db
