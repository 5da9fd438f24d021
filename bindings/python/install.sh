#!/bin/sh
# install.sh PYTHON DIR -- install the ulpt package into DIR (a site-packages directory),
# as `make install` does: build its wheel offline (setuptools, wheel) from a copy of the
# sources, so the checkout stays clean, and unpack it -- a wheel is a zip of exactly the
# installed files, with the dist-info metadata that importlib.metadata and pip read.
set -eu
python=$1
dest=$2
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src/ulpt"
cp "$here/pyproject.toml" "$here/setup.py" "$here/README.md" "$tmp/src/"
cp "$here"/ulpt/*.py "$here/ulpt/py.typed" "$tmp/src/ulpt/"
if ! "$python" -m pip wheel -q --no-build-isolation --no-index --no-deps -w "$tmp/wheel" \
        "$tmp/src" >"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    echo "install.sh: building the ulpt wheel needs pip, setuptools and wheel for $python" \
         "(Debian: python3-pip python3-setuptools python3-wheel)" >&2
    exit 1
fi
rm -rf "$dest/ulpt" "$dest"/ulpt-*.dist-info
mkdir -p "$dest"
"$python" -m zipfile -e "$tmp"/wheel/ulpt-*.whl "$dest"
echo "python: installed ulpt into $dest"
