# variants.mk -- the instrumented builds.  The table below is the one place that says how
# each differs from the plain build: its compiler, its flags, its link flags and the
# environment its programs run in.  Everything else -- sources, include paths, libraries
# -- is shared, and each variant's objects live under tests/build/VARIANT/.

VARIANTS := asan ubsan tsan fuzz cov

# Keep every object make builds on the way (fuzz targets' objects are otherwise deleted as
# intermediates and rebuilt next time).
.SECONDARY:

asan_CC := clang
asan_FLAGS := -O1 -fno-omit-frame-pointer -fsanitize=address
asan_RUN := CK_FORK=no ASAN_OPTIONS=detect_leaks=1:abort_on_error=0

ubsan_CC := clang
ubsan_FLAGS := -O1 -fno-omit-frame-pointer -fsanitize=undefined,float-cast-overflow \
    -fno-sanitize-recover=all
ubsan_RUN := CK_FORK=no

tsan_CC := clang
tsan_FLAGS := -O1 -fsanitize=thread
tsan_RUN := TSAN_OPTIONS=halt_on_error=1

# libFuzzer: objects get the coverage instrumentation, the link adds the fuzzer's main.
fuzz_CC := clang
fuzz_FLAGS := -O1 -fsanitize=fuzzer-no-link,address,undefined
fuzz_LINK := -fsanitize=fuzzer,address,undefined

cov_CC := gcc
cov_FLAGS := -O0 --coverage

VARIANT_CFLAGS = -std=c11 -g -Iinclude -Ilib -Iexamples/tinylm $(COMMON_CFLAGS) -Itests $(DEP_CFLAGS) \
    $(CHECK_CFLAGS)

# $(call variant,NAME): the object rules and the programs of one variant.
#   tests/build/NAME/test_ulpt      the library's Check suite
#   tests/build/NAME/test_tinylm    tinylm's Check suite
#   tests/build/NAME/threads        threads sharing a projection and prompts
#   tests/build/NAME/fuzz_TARGET    a libFuzzer target (fuzz_tlm: tinylm's loader)
define variant
$1_LINK ?= $$($1_FLAGS)
$1_LIB := $(patsubst %.c,tests/build/$1/%.o,$(SRCS))
$1_TLM := $(patsubst %.c,tests/build/$1/%.o,$(TLM_SRCS))

tests/build/$1/%.o: %.c $(LIB_HDRS) $(wildcard tests/*.h)
	@mkdir -p $$(@D)
	$$($1_CC) $$($1_FLAGS) $$(VARIANT_CFLAGS) -c $$< -o $$@

tests/build/$1/test_ulpt: $$($1_LIB) $(patsubst %.c,tests/build/$1/%.o,$(TEST_SRCS))
	$$($1_CC) $$($1_LINK) -o $$@ $$^ $$(CHECK_LIBS) $$(DEP_LIBS) -pthread

tests/build/$1/test_tinylm: $$($1_LIB) $$($1_TLM) \
    $(patsubst %.c,tests/build/$1/%.o,$(TLM_TEST_SRCS) $(TASK_SRCS) $(CLI_SRCS))
	$$($1_CC) $$($1_LINK) -o $$@ $$^ $$(CHECK_LIBS) $$(DEP_LIBS) -pthread

tests/build/$1/threads: $$($1_LIB) tests/build/$1/tests/threads.o
	$$($1_CC) $$($1_LINK) -o $$@ $$^ $$(DEP_LIBS) -pthread

tests/build/$1/fuzz_%: $$($1_LIB) tests/build/$1/tests/fuzz/fuzz_%.o
	$$($1_CC) $$($1_LINK) -o $$@ $$^ $$(DEP_LIBS) -pthread

tests/build/$1/fuzz_tlm: $$($1_TLM) tests/build/$1/tests/fuzz/fuzz_tlm.o
	$$($1_CC) $$($1_LINK) -o $$@ $$^ $$(DEP_LIBS) -pthread
endef
$(foreach v,$(VARIANTS),$(eval $(call variant,$v)))

.PHONY: check-asan check-ubsan check-tsan check-valgrind fuzz coverage

# Both suites: tinylm's loader reads files from elsewhere too.
check-asan check-ubsan: check-%: need-test tests/build/%/test_ulpt tests/build/%/test_tinylm
	$($*_RUN) ./tests/build/$*/test_ulpt
	$($*_RUN) ./tests/build/$*/test_tinylm

# Threads sharing a projection and a served prompt while each trains its own.
check-tsan: need-test tests/build/tsan/threads
	$(tsan_RUN) ./tests/build/tsan/threads

check-valgrind: need-test tests/test_ulpt
	ULPT_TEST_QUICK=1 CK_FORK=no valgrind --quiet --leak-check=full \
	    --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
	    --error-exitcode=1 ./tests/test_ulpt

# libFuzzer targets, seeded with real files, FUZZ_SECONDS each; any crash, leak, timeout
# or sanitizer report fails.  Crashes are left as tests/fuzz/crash-*.
#   prompt, checkpoint   libulpt's loaders (seeds: tests/fuzz/seeds.c)
#   tlm                  the example host's .tlm weights loader (seeds: seeds_tlm.c); a
#                        forged header may ask for up to TLM_MAX_BYTES, hence its limit
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := prompt checkpoint tlm
FUZZ_WORK := tests/fuzz/work
fuzz: need-test $(STATIC) $(foreach t,$(FUZZ_TARGETS),tests/build/fuzz/fuzz_$t)
	@rm -rf $(FUZZ_WORK) && mkdir -p $(FUZZ_WORK)/seeds $(FUZZ_WORK)/seeds-tlm
	$(CC) -std=c11 -O1 -Iinclude tests/fuzz/seeds.c $(STATIC) $(DEP_LIBS) -pthread \
	    -o $(FUZZ_WORK)/seeds-gen
	$(FUZZ_WORK)/seeds-gen $(FUZZ_WORK)/seeds
	$(CC) -std=c11 -O1 -Iexamples/tinylm tests/fuzz/seeds_tlm.c $(TLM_SRCS) $(DEP_CFLAGS) \
	    $(DEP_LIBS) -pthread -o $(FUZZ_WORK)/seeds-tlm-gen
	$(FUZZ_WORK)/seeds-tlm-gen $(FUZZ_WORK)/seeds-tlm
	@for t in $(FUZZ_TARGETS); do \
	    case $$t in tlm) seeds=seeds-tlm limits="-malloc_limit_mb=4200 -rss_limit_mb=2048" ;; \
	                *) seeds=seeds limits="-rss_limit_mb=2048" ;; esac; \
	    mkdir -p $(FUZZ_WORK)/corpus_$$t; \
	    tests/build/fuzz/fuzz_$$t $(FUZZ_WORK)/corpus_$$t $(FUZZ_WORK)/$$seeds \
	        -max_total_time=$(FUZZ_SECONDS) -timeout=10 $$limits \
	        -print_final_stats=1 -artifact_prefix=tests/fuzz/crash-$$t- \
	        > $(FUZZ_WORK)/$$t.log 2>&1 || { tail -40 $(FUZZ_WORK)/$$t.log; exit 1; }; \
	    echo "fuzz $$t: $$(sed -n 's/stat::number_of_executed_units: *//p' $(FUZZ_WORK)/$$t.log) executions in $(FUZZ_SECONDS) s, no crash"; \
	done

# Line and branch coverage of lib/ by the Check suite (gcov + gcovr); counts start at zero.
coverage: need-test tests/build/cov/test_ulpt
	@find tests/build/cov -name '*.gcda' -delete
	@for g in tests/build/cov/lib/*.gcno; do \
	    [ -e "lib/$$(basename "$$g" .gcno).c" ] || rm -f "$${g%.gcno}.gcno" "$${g%.gcno}.o"; \
	done # files of sources since removed
	./tests/build/cov/test_ulpt > tests/build/cov/run.log 2>&1 || { tail -20 tests/build/cov/run.log; exit 1; }
	gcovr --root . --filter 'lib/' --object-directory tests/build/cov/lib --branches | tail -n 3
	gcovr --root . --filter 'lib/' --object-directory tests/build/cov/lib --txt - | tail -n 20
