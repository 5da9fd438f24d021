"""The llama.cpp patch series (examples/llama/patches, applied by build-llama.sh): it
applies to the pinned source, the build is keyed by it, and a patch that does not apply is
refused by name with nothing left half-patched.

ULPT_LLAMA_CACHE_DIR names the cache whose pinned source (node-llama-cpp-VERSION/llama.cpp)
the test clones from, and ULPT_LLAMA_SRC the patched tree the build used (the Makefile sets
both)."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
SCRIPT = os.path.join(ROOT, "examples", "llama", "build-llama.sh")
PATCHES = os.path.join(ROOT, "examples", "llama", "patches")
CACHE = os.environ.get("ULPT_LLAMA_CACHE_DIR")
SRC = os.environ.get("ULPT_LLAMA_SRC")
PINNED = "node-llama-cpp-3.21.1"

pytestmark = pytest.mark.skipif(not CACHE or not SRC, reason="run through `make check-llama`")


def script(*args, patches=PATCHES):
    env = dict(os.environ, LLAMA_PATCHES=patches)
    return subprocess.run(["sh", SCRIPT, *args], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.fixture
def cache(tmp_path):
    """A cache whose pinned source is the real cache's (no fetch)."""
    os.makedirs(tmp_path / PINNED)
    os.symlink(os.path.abspath(os.path.join(CACHE, PINNED, "llama.cpp")),
               tmp_path / PINNED / "llama.cpp")
    return tmp_path


def series():
    return sorted(p for p in os.listdir(PATCHES) if p.endswith(".patch"))


def test_the_series_applies_to_the_pinned_source(cache):
    assert series(), "no patches"
    r = script("--prepare", str(cache))
    assert r.returncode == 0, r.stderr
    key = script("--key").stdout.strip()
    tree = cache / key / "llama.cpp"
    for name in series():
        assert "applied " + name in r.stdout
    # the function the patch declares, in the tree the build compiles
    with open(tree / "include" / "llama.h") as f:
        assert "LLAMA_API int32_t llama_embd_grad(" in f.read()
    # and the server's ULPT prompts (0002-server-ulpt.patch)
    with open(tree / "tools" / "server" / "server-ulpt.h") as f:
        assert "server_ulpt_tokens(" in f.read()
    # the prepared tree is the tree this run's build used, file for file
    diff = subprocess.run(["diff", "-r", "-q", "-x", ".git", "-x", "__pycache__", str(tree), SRC],
                          capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout[:2000]


def test_the_build_is_keyed_by_the_series(tmp_path):
    key = script("--key").stdout.strip()
    assert key.startswith(PINNED + "-p") and len(key) == len(PINNED) + 14
    assert os.path.basename(os.path.dirname(os.path.abspath(SRC))) == key
    # another series (here: none) is another directory, never the patched build's
    empty = tmp_path / "none"
    os.makedirs(empty)
    other = script("--key", patches=str(empty)).stdout.strip()
    assert other.startswith(PINNED + "-p") and other != key
    # one changed byte in a patch changes the key
    changed = tmp_path / "changed"
    shutil.copytree(PATCHES, changed)
    name = series()[0]
    with open(changed / name, "a") as f:
        f.write("\n")
    assert script("--key", patches=str(changed)).stdout.strip() not in (key, other)


def test_a_patch_that_does_not_apply_is_refused_by_name(cache, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(PATCHES, bad)
    name = series()[0]
    with open(bad / name) as f:
        text = f.read()
    # a context line of the first hunk that is not in the pinned source
    lines = text.split("\n")
    at = next(i for i, l in enumerate(lines) if l.startswith("@@")) + 1
    while not lines[at].startswith(" "):
        at += 1
    lines[at] = " " + lines[at][1:] + " /* not in the source */"
    with open(bad / name, "w") as f:
        f.write("\n".join(lines))
    r = script("--prepare", str(cache), patches=str(bad))
    assert r.returncode == 1
    assert ("patch %s does not apply to node-llama-cpp@3.21.1" % name) in r.stderr, r.stderr
    assert "nothing was built" in r.stderr
    # no tree of that series was left behind, patched or half patched
    key = script("--key", patches=str(bad)).stdout.strip()
    assert not os.path.exists(cache / key)
