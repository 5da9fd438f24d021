# check.mk -- `make check`: the steps in CHECK_STEPS, run in order.  A new kind of test
# is one rule here (or in its own tools/mk file) and one `CHECK_STEPS += check-NAME`,
# anywhere.

CHECK_STEPS := check-unit check-tinylm check-warnings check-abi check-exports check-install \
    check-layers

.PHONY: check check-run $(CHECK_STEPS)
check:
	@sh .ci/install-deps test
	@$(MAKE) --no-print-directory check-run
# Expanded when make runs it, so that steps added by files included later count too.
.SECONDEXPANSION:
check-run: $$(CHECK_STEPS)

# ---- the Check suite of the library: every tests/test_*.c, which register themselves ----

TEST_SRCS := $(wildcard tests/test_*.c)
TEST_OBJS := $(patsubst tests/%.c,tests/obj/%.o,$(TEST_SRCS))
TEST_CFLAGS = -std=c11 $(WARN) -Wno-missing-prototypes -Iinclude -Ilib $(CHECK_CFLAGS)

tests/obj/%.o: tests/%.c $(wildcard tests/*.h) $(LIB_HDRS)
	@mkdir -p tests/obj
	$(CC) $(CFLAGS) $(TEST_CFLAGS) -c $< -o $@

tests/test_ulpt: $(TEST_OBJS) $(STATIC)
	$(CC) $(CFLAGS) -o $@ $(TEST_OBJS) $(STATIC) $(CHECK_LIBS) $(DEP_LIBS) -pthread

check-unit: need-test tests/test_ulpt
	./tests/test_ulpt

# The example hosts' suite (TLM_TEST_SRCS, examples.mk): tinylm's model and loader, and
# examples/common; registered with TEST() and run by the library's tests/test_main.c.
tests/tinylm/test_tinylm: $(TLM_TEST_SRCS) $(TLM_DEPS) $(TASK_DEPS) $(CLI_DEPS) \
    $(wildcard tests/*.h) $(STATIC)
	$(CC) $(CFLAGS) $(TLM_CFLAGS) -Iinclude -Itests -Wno-missing-prototypes $(CHECK_CFLAGS) \
	    -o $@ $(TLM_TEST_SRCS) $(TLM_SRCS) $(TASK_SRCS) $(CLI_SRCS) $(STATIC) $(CHECK_LIBS) \
	    $(DEP_LIBS) -pthread

# The example programs build too (python tests run tlm and tune).
check-tinylm: need-test tests/tinylm/test_tinylm examples/tinylm/tlm examples/tinylm/tune \
    examples/quickstart
	./tests/tinylm/test_tinylm

# The library compiles warning-free under gcc and clang.
check-warnings: need-test
	@for cc in gcc clang; do \
	    $$cc -fsyntax-only -std=c11 $(WARN) -Werror -Iinclude $(DEP_CFLAGS) \
	        $(SRCS) tools/ulpt.c || exit 1; \
	done; echo "warnings: none from gcc or clang (-Wall -Wextra -Werror)"

check-exports: all
	sh tests/check-exports.sh

# The call graph between lib/ files (nm of the objects) and their includes (cc -MM),
# printed; any cycle in the calls fails: a lower layer never calls a higher one.
check-layers: all
	@CC="$(CC)" sh tests/check-layers.sh

check-install: all
	sh tests/check-install.sh

# ---- ABI guard ----------------------------------------------------------------------------
# tests/abi/check-abi.sh (the library is built with -g, which abidiff needs):
#   tests/abi/libulpt-1.0.abi  what 1.0.0 and 1.1.0 shipped, frozen: their symbols may not
#   tests/abi/libulpt-1.1.abi  be removed, changed or moved to another node (additions
#                              only), and a program built against 1.0's header
#                              (tests/abi/1.0/ulpt.h) must run.
#   tests/abi/libulpt-1.2.abi  the release being made: the library must equal it.
# To add a public function: declare it in include/ulpt.h ("Since 1.2"), list it in the
# ulpt_1.2 node of lib/libulpt.map, run `make abi-baseline` and commit the regenerated
# libulpt-1.2.abi with it.  When two branches both changed that file, resolve the merge
# by taking either side and running `make abi-baseline` again.  Never regenerate a
# released baseline; an incompatible change needs a new soname.
.PHONY: check-abi abi-baseline
ABI_BASELINE := tests/abi/libulpt-1.2.abi
check-abi: need-test all
	@CC="$(CC)" sh tests/abi/check-abi.sh

abi-baseline: need-test all
	abidw --no-corpus-path lib/libulpt.so.1 > $(ABI_BASELINE)

# ---- benchmark ----------------------------------------------------------------------------
.PHONY: bench
# bench_step reads internal.h for the switch that times each kernel path (--crossover).
tests/bench_step: tests/bench_step.c $(STATIC) $(LIB_HDRS)
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude -Ilib -o $@ $< $(STATIC) $(DEP_LIBS) -pthread

tests/bench_bank: tests/bench_bank.c $(STATIC)
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude -o $@ $< $(STATIC) $(DEP_LIBS) -pthread

# PyTorch's figures come in the same run when Debian's python3-torch is installed.
bench: need-build tests/bench_step tests/bench_bank
	@if $(PYTHON) -c "import torch" 2>/dev/null; then ./tests/bench_step --torch $(PYTHON); \
	else echo "bench: no PyTorch ($(PYTHON) -c 'import torch' failed): libulpt figures only"; \
	    ./tests/bench_step; fi
	./tests/bench_bank

# The library as one translation unit (every lib/*.c #included into one file, as an
# engine would drop it into its tree): file-scope names are unique across lib/, and the
# Check suite passes against it.
CHECK_STEPS += check-single-file
tests/build/single/ulpt-all.c: $(SRCS)
	@mkdir -p $(@D)
	@for f in $(SRCS); do echo "#include \"$$f\""; done > $@
tests/build/single/test_ulpt: tests/build/single/ulpt-all.c $(TEST_OBJS) $(LIB_HDRS)
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Werror -Wno-missing-prototypes -Wno-format-truncation -I. -Iinclude -Ilib \
	    $(DEP_CFLAGS) -c $< -o tests/build/single/ulpt-all.o
	$(CC) $(CFLAGS) -o $@ $(TEST_OBJS) tests/build/single/ulpt-all.o $(CHECK_LIBS) \
	    $(DEP_LIBS) -pthread
check-single-file: need-test tests/build/single/test_ulpt
	./tests/build/single/test_ulpt
