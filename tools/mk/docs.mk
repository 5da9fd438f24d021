# docs.mk -- docs that run: tests/docs/test_docs.py runs every code block of README.md and
# docs/*.md by its <!-- doctest: --> marker and checks the figures a cheap command can
# reproduce; the check-docs step of `make check`.  Blocks that need the downloaded task
# files run once `make data` has fetched them; ULPT_DOCS_LONG=1 adds those that take
# minutes; check-llama runs those that need llama.cpp.

# A step of `make check`, the last: it builds what the docs name.
CHECK_STEPS += check-docs
.PHONY: check-docs

check-docs: need-test all examples/tinylm/tlm examples/tinylm/tune examples/mpi/tune_mpi
	nice $(PYTHON) -m pytest -q -rs -p no:cacheprovider tests/docs
