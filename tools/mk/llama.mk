# llama.mk -- llama.cpp hosts libulpt (docs/LLAMA.md): the pinned llama.cpp built once,
# tinylm converted to GGUF, the host examples/llama/ulpt-llama, its demo and its test.
#
# llama.cpp is fetched as the npm package node-llama-cpp at this exact version
# (tools/fetch-package, checked against tools/packages.sha512), patched with the series in
# examples/llama/patches/ and built once, CPU only, into LLAMA_CACHE: examples/llama/cache
# by default, or the environment's ULPT_LLAMA_CACHE.  The build's directory is keyed by
# the version and the series' hash (build-llama.sh --key); later runs, and other clones
# pointed at the same cache, reuse the build, and every target here uses that one build.

.PHONY: llama llama-demo check-llama llama-results llama-bench llama-serve llama-serve-bench

LLAMA_VERSION := 3.21.1
LLAMA_CACHE ?= $(or $(ULPT_LLAMA_CACHE),examples/llama/cache)
LLAMA_KEY := $(shell sh examples/llama/build-llama.sh --key)
LLAMA_DIR := $(LLAMA_CACHE)/$(LLAMA_KEY)
LLAMA_STAMP := $(LLAMA_DIR)/built
LLAMA_SRC := $(LLAMA_DIR)/llama.cpp
LLAMA_BIN = $(abspath $(LLAMA_DIR)/build/bin)
LLAMA_GGUF := $(LLAMA_DIR)/tinylm.gguf
LLAMA_GGUF_GELU0 := $(LLAMA_DIR)/tinylm-gelu-zero.gguf
LLAMA_GGUF_LLAMA := $(LLAMA_DIR)/tinylm-llama.gguf
LLAMA_HOST := examples/llama/ulpt-llama
LLAMA_HOST_SRCS := examples/llama/ulpt-llama.c examples/llama/engine.c examples/llama/data.c \
    examples/llama/inputs.c examples/llama/check.c examples/llama/tenants.c examples/llama/tune.c \
    examples/llama/grad.c
LLAMA_HOST_DEPS := $(LLAMA_HOST_SRCS) examples/llama/engine.h examples/llama/host.h examples/llama/grad.h \
    examples/llama/data.h $(TLM_DEPS) $(TASK_DEPS) $(CLI_DEPS)

# The long build (libllama, ggml and llama-server: about 8 minutes on two free cores, half
# of it the server), with progress as it goes.  llama-server compiles against this clone's libulpt (order-only: a
# rebuilt libulpt keeps its ABI and needs no new server).
$(LLAMA_STAMP): | $(SHARED)
	@sh .ci/install-deps --check llama
	@sh examples/llama/build-llama.sh $(LLAMA_CACHE)

llama: $(LLAMA_STAMP)

# tinylm as GGUF (arch gpt2, float32, byte-level vocabulary), written with the gguf-py
# package of the same llama.cpp source.
$(LLAMA_GGUF): examples/llama/convert.py examples/tinylm/tinylm.tlm $(LLAMA_STAMP)
	$(PYTHON) examples/llama/convert.py examples/tinylm/tinylm.tlm $@ --gguf-py $(LLAMA_SRC)/gguf-py

# tinylm-llama as GGUF (arch llama, float32): the model llama_embd_grad differentiates.
$(LLAMA_GGUF_LLAMA): examples/llama/convert.py examples/tinylm/tinylm-llama.tlm $(LLAMA_STAMP)
	$(PYTHON) examples/llama/convert.py examples/tinylm/tinylm-llama.tlm $@ --gguf-py $(LLAMA_SRC)/gguf-py

# The test's variant with every GELU input far below -10, where GELU is exactly 0.
$(LLAMA_GGUF_GELU0): examples/llama/convert.py examples/tinylm/tinylm.tlm $(LLAMA_STAMP)
	$(PYTHON) examples/llama/convert.py examples/tinylm/tinylm.tlm $@ --gguf-py $(LLAMA_SRC)/gguf-py \
	    --gelu-zero

# The host: libulpt from the build tree, llama.cpp from the cache (-lllama -lggml
# -lggml-base; gguf.h for the vocabulary fingerprint), tinylm's C forward for the
# comparisons, examples/common for the task files and the command line.
$(LLAMA_HOST): $(LLAMA_HOST_DEPS) $(SHARED) include/ulpt.h $(LLAMA_STAMP)
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude $(COMMON_CFLAGS) -Iexamples/tinylm \
	    -I$(LLAMA_SRC)/include -I$(LLAMA_SRC)/ggml/include $(DEP_CFLAGS) -o $@ \
	    $(LLAMA_HOST_SRCS) $(TLM_SRCS) $(TASK_SRCS) $(CLI_SRCS) \
	    $(call link_shared,../../lib) -L$(LLAMA_BIN) -lllama -lggml -lggml-base \
	    -Wl,-rpath,$(LLAMA_BIN) $(DEP_LIBS) -pthread

# llama_embd_grad from C for tests/llama/test_grad.py, and llama_model_quantize for the
# quantized files it tests.
LLAMA_GRAD_CHECK := tests/llama/llama_grad
$(LLAMA_GRAD_CHECK): tests/llama/llama_grad.c $(LLAMA_STAMP)
	$(CC) $(CFLAGS) -std=c11 $(WARN) -I$(LLAMA_SRC)/include -I$(LLAMA_SRC)/ggml/include \
	    -o $@ $< -L$(LLAMA_BIN) -lllama -lggml -lggml-base -Wl,-rpath,$(LLAMA_BIN)

# ggml's OUT_PROD on the CPU backend against a double-precision sum, for
# tests/llama/test_out_prod.py (patch 0003's kernel).
LLAMA_OUT_PROD_CHECK := tests/llama/ggml_out_prod
$(LLAMA_OUT_PROD_CHECK): tests/llama/ggml_out_prod.c $(LLAMA_STAMP)
	$(CC) $(CFLAGS) -std=c11 $(WARN) -I$(LLAMA_SRC)/ggml/include -o $@ $< \
	    -L$(LLAMA_BIN) -lggml -lggml-base -lggml-cpu -lm -Wl,-rpath,$(LLAMA_BIN)

# End to end on a fresh clone: build llama.cpp once, convert tinylm, serve the prompt
# `make demo` trains (and one for spam) through llama.cpp against tune --load, several
# prompts at once, a prompt tuned inside llama.cpp with forward passes only, and one tuned
# first-order inside llama.cpp (llama_embd_grad) on tinylm-llama, float32 and Q4_K_M.
llama-demo:
	@sh .ci/install-deps llama
	@$(MAKE) -s --no-print-directory all data examples/tinylm/tune $(LLAMA_STAMP)
	@$(MAKE) -s --no-print-directory $(LLAMA_GGUF) $(LLAMA_GGUF_GELU0) $(LLAMA_GGUF_LLAMA) \
	    $(LLAMA_HOST)
	@sh examples/llama/demo.sh $(LLAMA_GGUF) $(LLAMA_GGUF_GELU0) $(LLAMA_HOST) $(LLAMA_GGUF_LLAMA)

# The comparison of docs/RESULTS.md ("Inside llama.cpp"): first-order tuning in llama.cpp
# against the PyTorch host, forward-only at equal wall time, vanilla prompt tuning, no
# prompt, and the quantized files; runs appended to docs/results/llama.jsonl (a run
# already there is not run again: delete the file to start over).  About 45 minutes on
# two shared cores at these sizes.
LLAMA_RESULTS_STEPS ?= 100
LLAMA_QUANT := examples/tinylm/cache/tinylm-llama
llama-results:
	@sh .ci/install-deps llama
	@$(MAKE) -s --no-print-directory all data $(LLAMA_STAMP)
	@$(MAKE) -s --no-print-directory $(LLAMA_GGUF_LLAMA) $(LLAMA_HOST)
	@for q in Q8_0 Q4_K_M; do [ -f $(LLAMA_QUANT)-$$q.gguf ] || \
	    $(LLAMA_HOST) quantize $(LLAMA_GGUF_LLAMA) $(LLAMA_QUANT)-$$q.gguf $$q >/dev/null || exit 1; done
	OMP_WAIT_POLICY=passive nice -n 10 $(PYTHON) examples/llama/compare.py \
	    --host $(LLAMA_HOST) --gguf $(LLAMA_GGUF_LLAMA) --python $(PYTHON) \
	    --quantized Q8_0=$(LLAMA_QUANT)-Q8_0.gguf,Q4_K_M=$(LLAMA_QUANT)-Q4_K_M.gguf \
	    --steps $(LLAMA_RESULTS_STEPS) --jsonl docs/results/llama.jsonl \
	    --results docs/RESULTS.md examples/tinylm/cache/tasks

# Step time of first-order tuning inside llama.cpp against the PyTorch host (same model,
# task, batch, steps and threads), and their ratio.
LLAMA_BENCH_TASK ?= names
llama-bench:
	@sh .ci/install-deps llama
	@$(MAKE) -s --no-print-directory all data $(LLAMA_STAMP)
	@$(MAKE) -s --no-print-directory $(LLAMA_GGUF_LLAMA) $(LLAMA_HOST)
	OMP_WAIT_POLICY=passive nice -n 10 $(PYTHON) examples/llama/bench_step.py \
	    --host $(LLAMA_HOST) --gguf $(LLAMA_GGUF_LLAMA) --python $(PYTHON) \
	    examples/tinylm/cache/tasks/$(LLAMA_BENCH_TASK)

# The llama.cpp test, which .ci/run runs after `make check` (it needs the long build):
# the converted model's logits against tinylm's C forward, a prompt for another model
# refused, batched tenants, and node-llama-cpp's tarball through the integrity check.
check-llama:
	@sh .ci/install-deps llama
	@$(MAKE) -s --no-print-directory all $(LLAMA_STAMP)
	@$(MAKE) -s --no-print-directory $(LLAMA_GGUF) $(LLAMA_GGUF_GELU0) $(LLAMA_HOST) \
	    $(LLAMA_GRAD_CHECK) $(LLAMA_OUT_PROD_CHECK)
	ULPT_LLAMA_GGUF=$(LLAMA_GGUF) ULPT_LLAMA_GGUF_GELU0=$(LLAMA_GGUF_GELU0) \
	    ULPT_LLAMA_HOST=$(LLAMA_HOST) ULPT_LLAMA_GRAD=$(LLAMA_GRAD_CHECK) \
	    ULPT_LLAMA_OUT_PROD=$(LLAMA_OUT_PROD_CHECK) \
	    ULPT_LLAMA_CACHE_DIR=$(LLAMA_CACHE) ULPT_LLAMA_SRC=$(LLAMA_SRC) \
	    ULPT_LLAMA_SERVER=$(LLAMA_SERVER) LD_LIBRARY_PATH=$(abspath lib) \
	    $(PYTHON) -m pytest -q -p no:cacheprovider tests/llama

# llama.cpp's own HTTP server with ULPT prompts (docs/LLAMA.md, "llama-server"), on the
# demo's model and the prompts `make llama-demo` tunes (names and spam, tuned here if
# absent).  The cached server runs with this clone's libulpt.so.1 (LD_LIBRARY_PATH): the
# build records only the soname, so clones sharing a cache each run their own library.
LLAMA_SERVER = $(LLAMA_BIN)/llama-server
LLAMA_SERVE_DIR := examples/tinylm/cache/llama-serve
LLAMA_PORT ?= 8080
llama-serve:
	@sh .ci/install-deps llama
	@$(MAKE) -s --no-print-directory all data examples/tinylm/tune $(LLAMA_STAMP)
	@$(MAKE) -s --no-print-directory $(LLAMA_GGUF)
	@mkdir -p $(LLAMA_SERVE_DIR)
	@for t in names spam; do p=examples/tinylm/cache/$$t-rank2.ulpt; [ -f $$p ] || { \
	    echo "tuning $$p as llama-demo does (400 steps of tinylm's backward)"; \
	    examples/tinylm/tune examples/tinylm/cache/tasks/$$t --seed 1 --steps 400 --lr 0.05 \
	        --skip-baseline --quiet --save $$p >/dev/null || exit 1; }; \
	    ln -sf ../$$t-rank2.ulpt $(LLAMA_SERVE_DIR)/$$t.ulpt; done
	LD_LIBRARY_PATH=$(abspath lib) OMP_WAIT_POLICY=passive $(LLAMA_SERVER) -m $(LLAMA_GGUF) \
	    --ulpt-dir $(LLAMA_SERVE_DIR) --port $(LLAMA_PORT) --metrics -np 4

# A bounded load test of llama-server with ULPT prompts (not a timed test; docs/LLAMA.md
# "Figures"): 64 clients, 1,000 prompts in the bank, 3,000 requests, against plain text of
# equal length and one prompt for all; then the server's RSS with 10,000 prompts loaded.
llama-serve-bench:
	@sh .ci/install-deps llama
	@$(MAKE) -s --no-print-directory all $(LLAMA_STAMP)
	@$(MAKE) -s --no-print-directory $(LLAMA_GGUF)
	LD_LIBRARY_PATH=$(abspath lib) $(PYTHON) examples/llama/bench_server.py \
	    --server $(LLAMA_SERVER) --gguf $(LLAMA_GGUF)
