#!/bin/sh
# Install the Python package into a scratch virtual environment with the command
# docs/PYTHON.md documents, import it from another directory, then run tests/python
# against that installed copy (ULPT_TEST_INSTALLED makes the tests check that they do).
# No environment points at the library: the package finds this checkout's build, which
# it recorded when it was installed.
set -eu
PYTHON=${PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv --system-site-packages "$tmp/venv"
"$tmp/venv/bin/pip" install -q --no-build-isolation --no-index bindings/python
unset ULPT_LIBRARY
(cd / && "$tmp/venv/bin/python" -c "import ulpt; print('check-python: ulpt', ulpt.version(), 'from', ulpt.__file__, 'with', ulpt.library_path)")
ULPT_TEST_INSTALLED="$tmp/venv" "$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider tests/python
