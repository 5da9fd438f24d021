# python.mk -- the Python package in bindings/python (docs/PYTHON.md).
#
#   make check-python    (a CHECK_STEPS step) install the package into a scratch virtual
#                        environment with the command docs/PYTHON.md gives and run
#                        tests/python against that installed copy
#   make check-python-valgrind   the lifetime tests under valgrind's memcheck (CI)
#   make bench-python    the Python callback's train_step against the by-hand loop
#   make install         also installs the package into PYTHONDIR (by default
#                        LIBDIR/pythonX.Y/dist-packages, on Debian's sys.path for PREFIX
#                        /usr/local and /usr); it then finds LIBDIR/libulpt.so.1 beside it

PYTHON_VERSION = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYTHONDIR ?= $(LIBDIR)/python$(PYTHON_VERSION)/dist-packages

CHECK_STEPS += check-python
.PHONY: check-python check-python-valgrind bench-python check-python-state-machine

check-python: need-test all examples/tinylm/tlm examples/tinylm/tune
	PYTHON=$(PYTHON) sh tests/python/check-python.sh

# The randomized state-machine test alone, long (CI runs it): STATE_OPS operations from
# seed STATE_SEED, against the float64 model; a failure prints the seed and the op log.
STATE_OPS ?= 30000
STATE_SEED ?= 7000
check-python-state-machine: need-test all
	ULPT_STATE_OPS=$(STATE_OPS) ULPT_STATE_SEED=$(STATE_SEED) LD_LIBRARY_PATH=$(CURDIR)/lib \
	    PYTHONPATH=$(CURDIR)/bindings/python nice $(PYTHON) -m pytest -q -s -p no:cacheprovider \
	    tests/python/test_state_machine.py

check-python-valgrind: need-test all
	PYTHON=$(PYTHON) sh tests/python/check-python-valgrind.sh

bench-python: need-test all
	LD_LIBRARY_PATH=$(CURDIR)/lib PYTHONPATH=$(CURDIR)/bindings/python \
	    $(PYTHON) bindings/python/bench.py
