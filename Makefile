# mldcn developer commands. `make setup` makes .venv; everything else runs inside it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# Without a GPU, pin the CPU build of torch (a plain `torch` can pull a multi-GB CUDA build).
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install --quiet torch==2.13.0; fi
	$(BIN)/python -m pip install --quiet -e '.[dev]'

demo:
	$(BIN)/mldcn demo

test:
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
