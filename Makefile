# The two commands of the README: `make demo` and `make test`. Both set up .venv from scratch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP_FLAGS := -q -c constraints.txt

.PHONY: install browser demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip setuptools wheel
	$(PY) -m pip install $(PIP_FLAGS) -e ".[serve,onnx,viz,view,ray,llm,test]"
	touch $(STAMP)

install: $(STAMP)

# Browser tests drive Debian's chromium (never a downloaded browser). Installed here when missing and
# we are root; otherwise those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "warning: chromium not installed; browser tests will skip"; }

demo: install
	$(PY) -m explain_serve.demo

test: install browser
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install $(PIP_FLAGS) -e ".[bench]"
	$(PY) benchmarks/compare_captum.py
	$(PY) benchmarks/compare_shap.py

clean:
	rm -rf $(VENV) out
