# The two commands of the README: `make demo` and `make test`. Both set up .venv from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_FLAGS := -q -c constraints.txt

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(PY) -m pip install $(PIP_FLAGS) -e ".[serve,onnx,viz,test]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m explain_serve.demo

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install $(PIP_FLAGS) -e ".[bench]"
	$(PY) benchmarks/compare_captum.py
	$(PY) benchmarks/compare_shap.py

clean:
	rm -rf $(VENV) out
