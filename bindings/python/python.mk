# The Python package (bindings/python), included by the Makefile.
#
#   make install      also installs the package into PYTHONDIR (by default
#                     PREFIX/lib/pythonX.Y/dist-packages, on Debian's sys.path for
#                     PREFIX /usr/local and /usr); the package then finds
#                     PREFIX/lib/libulpt.so.1 beside it
#   make check-python installs it into a scratch virtual environment with the command
#                     docs/PYTHON.md gives, and runs tests/python against that copy
#   make check-python-valgrind   the lifetime tests under valgrind's memcheck
#   make bench-python the Python callback's overhead at (100, 2, 4096)

PYTHON_VERSION = $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYTHONDIR ?= $(LIBDIR)/python$(PYTHON_VERSION)/dist-packages

.PHONY: check-python check-python-valgrind bench-python

check-python: all tools/ulpt examples/tinylm/tlm examples/tinylm/tune
	PYTHON=$(PYTHON) sh tests/python/check-python.sh

check-python-valgrind: all
	PYTHON=$(PYTHON) sh tests/python/check-python-valgrind.sh

bench-python: all
	LD_LIBRARY_PATH=$(CURDIR)/lib PYTHONPATH=$(CURDIR)/bindings/python \
	    $(PYTHON) bindings/python/bench.py
