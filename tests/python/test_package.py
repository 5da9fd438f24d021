"""The package: where it is imported from, how it finds libulpt, and that every public C
function of include/ulpt.h is bound (and used by the binding)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ulpt
from ulpt import _native

ROOT = Path(__file__).resolve().parent.parent.parent
HEADER = ROOT / "include" / "ulpt.h"
PACKAGE = ROOT / "bindings" / "python"


def header_functions():
    return sorted(set(re.findall(r"ULPT_API [^;(]*?\b(ulpt_[a-z0-9_]+)\(", HEADER.read_text())))


def run_python(code, cwd="/", **env_changes):
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_tests_run_against_the_installed_copy_when_make_check_says_so():
    venv = os.environ.get("ULPT_TEST_INSTALLED")
    if not venv:
        pytest.skip("not run by make check-python (no ULPT_TEST_INSTALLED)")
    here = Path(ulpt.__file__).resolve()
    assert Path(venv).resolve() in here.parents
    assert PACKAGE.resolve() not in here.parents
    # it found the library of the checkout it was installed from, recorded at install
    from ulpt._build_tree import LIBRARY
    assert Path(LIBRARY) == ROOT / "lib" / "libulpt.so.1"
    if not os.environ.get("LD_LIBRARY_PATH") and ulpt.library_path != "libulpt.so.1":
        assert ulpt.library_path == LIBRARY


def test_package_version_is_the_headers_and_the_librarys():
    h = HEADER.read_text()
    parts = [re.search(r"#define ULPT_VERSION_%s (\d+)" % k, h).group(1)
             for k in ("MAJOR", "MINOR", "PATCH")]
    assert ulpt.__version__ == ".".join(parts) == ulpt.version()
    assert ulpt.version_number() == int(parts[0]) * 10000 + int(parts[1]) * 100 + int(parts[2])
    pyproject = (PACKAGE / "pyproject.toml").read_text()
    assert re.search(r'^version = "%s"$' % re.escape(ulpt.__version__), pyproject, re.M)


def test_import_works_from_any_directory_and_prints_the_version():
    r = run_python("import ulpt; print(ulpt.version())", cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ulpt.version()


def test_ULPT_LIBRARY_wins_and_a_bad_one_is_a_clear_ImportError(tmp_path):
    lib = str(ROOT / "lib" / "libulpt.so.1")
    r = run_python("import ulpt; print(ulpt.library_path)", ULPT_LIBRARY=lib)
    assert r.returncode == 0 and r.stdout.strip() == lib, r.stderr
    bogus = tmp_path / "libnothing.so"
    bogus.write_bytes(b"not an ELF file")
    r = run_python("import ulpt", ULPT_LIBRARY=str(bogus))
    assert r.returncode == 1
    assert "ImportError: libulpt not found" in r.stderr and str(bogus) in r.stderr


def test_the_system_loader_comes_before_the_build_tree():
    # LD_LIBRARY_PATH is how the loader is pointed at a library here; the checkout's
    # package then takes the soname rather than its own build tree's path.
    code = "import sys; sys.path.insert(0, %r); import ulpt; print(ulpt.library_path, ulpt.__file__)" \
        % str(PACKAGE)
    r = run_python(code, ULPT_LIBRARY=None, LD_LIBRARY_PATH=str(ROOT / "lib"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "libulpt.so.1"


def test_a_checkout_finds_its_build_tree_without_any_environment():
    code = "import sys; sys.path.insert(0, %r); import ulpt; print(ulpt.library_path)" \
        % str(PACKAGE)
    r = run_python(code, ULPT_LIBRARY=None, LD_LIBRARY_PATH=None)
    assert r.returncode == 0, r.stderr
    found = r.stdout.strip()
    if found == "libulpt.so.1":
        pytest.skip("a libulpt.so.1 is installed system-wide and comes first")
    assert Path(found) == ROOT / "lib" / "libulpt.so.1"


def test_every_public_function_is_bound_and_used_by_the_binding():
    functions = header_functions()
    assert len(functions) >= 54
    missing = [f for f in functions if f not in _native.SIGNATURES]
    assert not missing, "not in _native.SIGNATURES: %s" % missing
    extra = [f for f in _native.SIGNATURES if f not in functions]
    assert not extra, "bound but not in the header: %s" % extra
    # and each is called somewhere in the package outside the prototype table
    sources = "".join(p.read_text() if p.name != "_native.py"
                      else p.read_text().split("\ndef _candidates", 1)[1]
                      for p in (Path(ulpt.__file__).parent).glob("*.py"))
    unused = [f for f in functions if f not in sources]
    assert not unused, "bound but never called: %s" % unused
    for f in functions:
        assert callable(getattr(_native.lib, f))


def test_a_function_the_loaded_library_lacks_raises_UnsupportedError_when_called():
    stub = _native._missing("ulpt_from_the_future")
    with pytest.raises(ulpt.UnsupportedError) as err:
        stub(1, 2)
    assert err.value.code == ulpt.ERR_UNSUPPORTED and "ulpt_from_the_future" in str(err.value)
    assert isinstance(err.value, NotImplementedError)


def test_ctypes_structs_have_the_frozen_layouts_of_tests_abi_layout_c():
    text = (ROOT / "tests" / "abi" / "layout.c").read_text()
    sizes = dict((t, int(n)) for t, n in
                 re.findall(r"^ABI_(?:SIZE|FROZEN)\((\w+), (\d+)\);", text, re.M))
    assert "ulpt_prompt_options" in sizes and "ulpt_bank_request" in sizes
    for t, size in sizes.items():
        struct = getattr(_native, t)
        assert ctypes_sizeof(struct) == size, t
    for t, field, off in re.findall(r"^ABI_FIELD\((\w+), (\w+), (\d+)\);", text, re.M):
        assert getattr(getattr(_native, t), field).offset == int(off), (t, field)
    named = [n for n, _ in _native.ulpt_allocator._fields_]
    assert named == ["alloc", "realloc", "free", "user"]


def ctypes_sizeof(struct):
    import ctypes
    return ctypes.sizeof(struct)
