#!/bin/sh
# The Python lifetime tests (tests/python/test_lifetimes.py) and a short run of the
# state machine (tests/python/test_state_machine.py, ULPT_STATE_OPS operations per
# thread, 40 by default) under valgrind's memcheck:
# any invalid read or write, use after free or double free fails the run.  Python's own
# allocator is switched off so that memcheck sees every block; leaks are not counted
# (the interpreter keeps its modules until exit).
set -eu
PYTHON=${PYTHON:-/usr/bin/python3}
export LD_LIBRARY_PATH="$(pwd)/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$(pwd)/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONMALLOC=malloc OPENBLAS_NUM_THREADS=1
export ULPT_STATE_OPS=${ULPT_STATE_OPS:-40}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! valgrind --error-exitcode=99 --leak-check=no --log-file="$log" \
        "$PYTHON" -m pytest -q -p no:cacheprovider tests/python/test_lifetimes.py \
        tests/python/test_state_machine.py; then
    cat "$log"
    echo "check-python-valgrind: FAIL" >&2
    exit 1
fi
errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | tail -1)
echo "check-python-valgrind: the lifetime tests and the state machine under memcheck: ${errors:-?} errors"
[ "${errors:-1}" = 0 ]
