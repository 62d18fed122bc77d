# The two commands a new user types: `make demo` and `make test`. Both set themselves up.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
D2_STAMP := $(VENV)/.detectron2

.PHONY: setup detectron2 test lint demo clean

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

# detectron2 is optional for pretraining/evaluation; detection/ and its tests need it.
detectron2: $(D2_STAMP)

$(D2_STAMP): $(STAMP) detection/requirements.txt detection/install_detectron2.sh
	bash detection/install_detectron2.sh $(BIN)/python
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) $(D2_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder tests

# Fashion-MNIST (installed with apt when missing; FASHION_MNIST_DIR=... points at another copy), within 15 min.
demo: $(STAMP)
	$(BIN)/python demo.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
