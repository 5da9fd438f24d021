"""tools/fetch-package, without a network: a stand-in `npm` (NPM=...) writes the tarball
`npm pack` would, so every path -- good, tampered, truncated, unlisted, cached -- runs
offline against a private sums file and cache."""
import hashlib
import io
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TOOL = os.path.join(ROOT, "tools", "fetch-package")
SPEC = "@example/data@1.2.3"


def make_tarball(files):
    """A gzip'd tarball shaped like npm's: everything under package/."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("package/" + name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GOOD = make_tarball({"package.json": b'{"name": "@example/data"}\n',
                     "data/words.txt": b"alpha\nbeta\n"})


@pytest.fixture
def env(tmp_path):
    """A sums file listing GOOD for SPEC, an empty cache, and a stand-in npm that writes
    whatever tmp_path/served holds (and logs each call to tmp_path/npm.log)."""
    sums = tmp_path / "packages.sha512"
    sums.write_text("# test\n%s  %s\n" % (hashlib.sha512(GOOD).hexdigest(), SPEC))
    (tmp_path / "served").write_bytes(GOOD)
    npm = tmp_path / "npm"
    npm.write_text("#!/bin/sh\n"
                   "echo \"$*\" >> '%s/npm.log'\n"
                   "[ -f '%s/offline' ] && { echo 'npm ERR! network unreachable' >&2; exit 1; }\n"
                   "cp '%s/served' example-data-1.2.3.tgz\n"
                   "echo example-data-1.2.3.tgz\n" % (tmp_path, tmp_path, tmp_path))
    npm.chmod(0o755)
    e = dict(os.environ, ULPT_PACKAGE_SUMS=str(sums), ULPT_PACKAGE_CACHE=str(tmp_path / "cache"),
             NPM=str(npm))
    return tmp_path, e


def run(e, spec, dest):
    return subprocess.run([sys.executable, TOOL, spec, str(dest)], env=e, capture_output=True,
                          text=True)


def npm_calls(tmp):
    log = tmp / "npm.log"
    return log.read_text().splitlines() if log.exists() else []


def test_good_tarball_is_unpacked_and_cached(env):
    tmp, e = env
    dest = tmp / "out"
    r = run(e, SPEC, dest)
    assert r.returncode == 0, r.stderr
    assert (dest / "data" / "words.txt").read_bytes() == b"alpha\nbeta\n"
    assert npm_calls(tmp) == ["pack --ignore-scripts --loglevel=error " + SPEC]
    cached = list((tmp / "cache").iterdir())
    assert len(cached) == 1 and cached[0].read_bytes() == GOOD


def test_second_run_uses_the_cache_and_verifies_it(env):
    tmp, e = env
    assert run(e, SPEC, tmp / "a").returncode == 0
    (tmp / "offline").touch()
    # destdir up to date: nothing to do
    assert run(e, SPEC, tmp / "a").returncode == 0
    # a new destdir comes from the cache, without npm
    r = run(e, SPEC, tmp / "b")
    assert r.returncode == 0, r.stderr
    assert (tmp / "b" / "data" / "words.txt").exists()
    assert len(npm_calls(tmp)) == 1
    # a cache entry that no longer matches is dropped and fetched again (offline: fails)
    cached = next((tmp / "cache").iterdir())
    cached.write_bytes(GOOD[:-1] + bytes([GOOD[-1] ^ 1]))
    r = run(e, SPEC, tmp / "c")
    assert r.returncode == 1
    assert "cached tarball does not match" in r.stderr and SPEC in r.stderr
    assert not cached.exists() and not (tmp / "c").exists()


@pytest.mark.parametrize("damage", ["tampered", "truncated", "empty"])
def test_damaged_tarball_is_refused_naming_the_package(env, damage):
    tmp, e = env
    if damage == "tampered":
        bad = make_tarball({"package.json": b'{"name": "@example/data"}\n',
                            "data/words.txt": b"alpha\nbeta\nevil\n"})
    elif damage == "truncated":
        bad = GOOD[:len(GOOD) // 2]
    else:
        bad = b""
    (tmp / "served").write_bytes(bad)
    dest = tmp / "out"
    dest.mkdir()
    (dest / "keep").write_text("old")
    r = run(e, SPEC, dest)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and SPEC in lines[0] and "does not match" in lines[0], r.stderr
    # nothing unpacked, nothing cached, the old folder untouched
    assert sorted(os.listdir(dest)) == ["keep"]
    assert not (tmp / "cache").exists() or not list((tmp / "cache").iterdir())


def test_package_without_a_committed_sha512_is_refused_before_fetching(env):
    tmp, e = env
    r = run(e, "@example/data@1.2.4", tmp / "out")
    assert r.returncode == 1
    assert "@example/data@1.2.4" in r.stderr and "no sha512" in r.stderr
    assert npm_calls(tmp) == [] and not (tmp / "out").exists()


@pytest.mark.parametrize("spec", ["@example/data", "@example/data@^1.2.3", "@example/data@latest",
                                  "@1.2.3"])
def test_inexact_specs_are_refused(env, spec):
    tmp, e = env
    r = run(e, spec, tmp / "out")
    assert r.returncode == 1 and npm_calls(tmp) == []


def test_unsafe_paths_are_refused(env):
    tmp, e = env
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/../../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    bad = buf.getvalue()
    (tmp / "served").write_bytes(bad)
    (tmp / "packages.sha512").write_text("%s  %s\n" % (hashlib.sha512(bad).hexdigest(), SPEC))
    r = run(e, SPEC, tmp / "deep" / "out")
    assert r.returncode == 1 and "unsafe path" in r.stderr
    assert not (tmp / "escape").exists() and not (tmp / "deep" / "out").exists()


def test_committed_sums_are_well_formed():
    with open(os.path.join(ROOT, "tools", "packages.sha512")) as f:
        lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
    specs = [l.split("  ")[1] for l in lines]
    assert len(set(specs)) == len(specs)
    for l in lines:
        digest, spec = l.split("  ")
        assert len(digest) == 128 and int(digest, 16) >= 0 and "@" in spec[1:]
