# mldcn developer commands. `make setup` makes .venv; everything else runs inside it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-torchrec demo test clean

setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# Without a GPU, pin the CPU build of torch (a plain `torch` can pull a multi-GB CUDA build).
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install --quiet torch==2.13.0; fi
	$(BIN)/python -m pip install --quiet -e '.[dev]'

# Optional: TorchRec for sharded embedding tables. Its metadata asks for the CUDA build of
# fbgemm; on CPU the CPU build is installed and torchrec itself without dependencies.
setup-torchrec:
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install --quiet torchrec==1.8.0; \
	else $(BIN)/python -m pip install --quiet fbgemm-gpu-cpu==1.8.0 tensordict torchmetrics==1.0.3 pyre-extensions iopath \
	  && $(BIN)/python -m pip install --quiet --no-deps torchrec==1.8.0; fi

demo:
	$(BIN)/mldcn demo

test:
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
