"""Make `import ulpt` work for every test file, and for the Python processes tests
start: the installed package when there is one (`make check` installs it into a scratch
virtual environment and runs the tests against that copy), otherwise the package in this
checkout."""
import os
import sys

try:
    import ulpt  # noqa: F401
except ModuleNotFoundError:
    _here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                         "bindings", "python")
    _here = os.path.normpath(_here)
    sys.path.insert(0, _here)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [_here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
