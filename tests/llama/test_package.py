"""llama.cpp's source package through the integrity check: tools/fetch-package refuses a
tampered or truncated node-llama-cpp tarball and unpacks the genuine one.

npm is replaced by a stand-in that hands over a prepared tarball (NPM=...), so the tests
decide exactly which bytes arrive; the genuine tarball comes from fetch-package's own
cache (filled by the llama.cpp build) or is fetched once."""
import hashlib
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
FETCH = os.path.join(ROOT, "tools", "fetch-package")
SUMS = os.path.join(ROOT, "tools", "packages.sha512")
SPEC = "node-llama-cpp@3.21.1"
TARBALL = "node-llama-cpp-3.21.1.tgz"


def committed():
    with open(SUMS) as f:
        for line in f:
            if line.rstrip("\n").endswith("  " + SPEC):
                return line.split()[0]
    raise AssertionError(SPEC + " has no line in tools/packages.sha512")


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """The genuine tarball's bytes, checked against the committed sha512 here too."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    cache = os.environ.get("ULPT_PACKAGE_CACHE") or os.path.join(base, "libulpt", "packages")
    path = os.path.join(cache, TARBALL)
    if not os.path.exists(path):
        dest = tmp_path_factory.mktemp("fetch") / "package"
        r = subprocess.run([sys.executable, FETCH, SPEC, str(dest)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
    with open(path, "rb") as f:
        data = f.read()
    assert hashlib.sha512(data).hexdigest() == committed()
    return data


def fetch_with(tmp_path, data):
    """fetch-package with an npm that delivers `data` as the tarball, and an empty cache."""
    served = tmp_path / "served.tgz"
    served.write_bytes(data)
    npm = tmp_path / "npm"
    npm.write_text('#!/bin/sh\ncp "%s" "%s"\n' % (served, TARBALL))
    npm.chmod(0o755)
    env = dict(os.environ, NPM=str(npm), ULPT_PACKAGE_CACHE=str(tmp_path / "cache"))
    dest = tmp_path / "package"
    r = subprocess.run([sys.executable, FETCH, SPEC, str(dest)], capture_output=True,
                       text=True, env=env)
    return r, dest


def refused(r, dest):
    return (r.returncode == 1 and SPEC in r.stderr and "does not match" in r.stderr
            and not dest.exists())


def test_a_truncated_tarball_is_refused(tmp_path, genuine):
    r, dest = fetch_with(tmp_path, genuine[: len(genuine) // 2])
    assert refused(r, dest), r.stderr
    assert not (tmp_path / "cache" / TARBALL).exists()


def test_a_tampered_tarball_is_refused(tmp_path, genuine):
    data = bytearray(genuine)
    data[len(data) // 2] ^= 0x01
    r, dest = fetch_with(tmp_path, bytes(data))
    assert refused(r, dest), r.stderr


def test_the_genuine_tarball_gives_the_llama_cpp_bundle(tmp_path, genuine):
    r, dest = fetch_with(tmp_path, genuine)
    assert r.returncode == 0, r.stderr
    assert (dest / "llama" / "gitRelease.bundle").stat().st_size > 1 << 20
