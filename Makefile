# libulpt -- plain GNU make.  This file is the table of contents; the rules live in
# tools/mk/*.mk, one concern each.
#
#   make              lib/libulpt.so.1.MINOR.PATCH (soname libulpt.so.1), lib/libulpt.a, tools/ulpt
#   make demo         tune a rank-2 prompt for the shipped tinylm on real data (the main job)
#   make check        build and run the test suite: every step in CHECK_STEPS
#   make deps         install every Debian package any target needs (as root; otherwise
#                     print the apt-get line).  Only deps, demo and check install packages;
#                     every other target names what is missing and stops.
#
#   make quickstart   the smallest complete program, run
#   make data         fetch the public data sets (tools/fetch-package) and build the tasks
#   make results      ULPT against vanilla prompt tuning on three tasks: docs/RESULTS.md
#   make pretrain     pretrain tinylm on Moby-Dick (PyTorch)
#   make bench        time forward, backward and a training step against a memory stream;
#                     the prompt bank's materialisation rate and memory
#   make check-asan, check-ubsan, check-tsan, check-valgrind, fuzz, coverage
#                     the suite under sanitizers and valgrind, libFuzzer, gcov
#   make check-docs   every code block of README.md and docs/ run, figures checked (a step
#                     of make check)
#   make check-abi    the exported ABI against the committed baseline (abi-baseline renews it)
#   make check-python the Python package installed into a scratch venv, tests/python on it
#   make bench-python the Python callback path against the by-hand loop
#   make check-mpi    data-parallel training on 1, 2 and 4 MPI ranks (a step of make check)
#   make check-rust, check-rust-valgrind
#                     the Rust crates' tests, example and docs; their tests under valgrind
#   make llama-demo   serve and tune prompts inside llama.cpp (built once from the pinned
#                     package, about 8 minutes); make check-llama is its test (CI)
#   make llama-serve  llama.cpp's llama-server with the demo's ULPT prompts (port 8080);
#                     make llama-serve-bench, its bounded load test
#   make install      PREFIX=/usr/local DESTDIR= : header, libraries, ulpt.pc, ulpt(1),
#                     the Python package (PYTHONDIR=)
#   make uninstall, make clean

.DEFAULT_GOAL := all

include tools/mk/config.mk      # version, compilers, flags, dependency look-ups, deps/need-*
include tools/mk/lib.mk         # the library and the ulpt command-line tool
include tools/mk/examples.mk    # quickstart, tinylm, demo, data, results, pretrain
include tools/mk/check.mk       # check and its CHECK_STEPS, check-abi, bench
include tools/mk/mpi.mk         # data-parallel training over MPI: tune_mpi, check-mpi
include tools/mk/rust.mk        # the Rust crates: check-rust (a check step), check-rust-valgrind
include tools/mk/variants.mk    # sanitizer, fuzz and coverage builds: how each differs
include tools/mk/python.mk      # the Python package: check-python, bench-python
include tools/mk/install.mk     # install, uninstall, clean
include tools/mk/llama.mk       # llama.cpp hosts libulpt: llama, llama-demo, check-llama
include tools/mk/docs.mk        # docs that run: check-docs (a check step)
