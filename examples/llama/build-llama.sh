#!/bin/sh
# Build llama.cpp's libllama, ggml and llama-server for the CPU, with the project's patch
# series, once, into a cache that later runs reuse.  llama.cpp's source comes from the npm package
# node-llama-cpp at the pinned version (its package/llama/gitRelease.bundle), fetched by
# tools/fetch-package, which checks the tarball against the sha512 committed in
# tools/packages.sha512.
#
#     examples/llama/build-llama.sh CACHEDIR            fetch (once), patch, build
#     examples/llama/build-llama.sh --prepare CACHEDIR  fetch (once) and patch only
#     examples/llama/build-llama.sh --key               the build's directory name
#
# CACHEDIR/node-llama-cpp-VERSION/llama.cpp is the pinned source as fetched (a git
# clone of the bundle; nothing is built or changed there).  The build goes to
# CACHEDIR/KEY/, KEY = node-llama-cpp-VERSION-pHASH, HASH the first 12 hex digits of the
# sha256 of the patch series (each patch's file name and contents, in order): a changed
# patch is a new directory and a new build, and an unpatched build is never taken for a
# patched one.  KEY/ gets llama.cpp/ (a clone of the pinned commit with
# examples/llama/patches/*.patch applied in name order, gguf-py included), build/bin/
# (libllama.so, libggml*.so, llama-server), build.log and the stamp `built` once complete;
# with the stamp present this does nothing.
#
# llama-server (with 0002-server-ulpt.patch) links libulpt through its stable ABI: it is
# compiled against this clone's include/ulpt.h and lib/libulpt.so (`make` first), records
# only the soname libulpt.so.1, and runs with whichever libulpt.so.1 the loader finds: the
# Makefile puts the running clone's lib/ on LD_LIBRARY_PATH, so a cache shared by clones
# never ties one clone to another's library.
#
# Each patch is `git apply --check`ed against the tree so far, then applied; one that
# does not apply stops everything with its name and git's reason, and leaves no
# patched tree behind.  Progress goes to stdout as the build advances (about 8 minutes on
# two free cores).  LLAMA_JOBS (default 2) sets the parallel jobs; LLAMA_PATCHES
# (default examples/llama/patches) another patch directory, for tests.  Debian's cmake, a
# C/C++ compiler, git and npm are needed (.ci/install-deps llama).
set -eu

PACKAGE=node-llama-cpp
VERSION=3.21.1
# The commit the pinned package's bundle holds: a fetched source must be exactly this.
COMMIT=80fb11ac73e66d89eae2c6a91d8a77428fa733ed
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
patches=${LLAMA_PATCHES:-$here/patches}
jobs=${LLAMA_JOBS:-2}

mode=build
case "${1:-}" in
--key) mode=key ;;
--prepare) mode=prepare; shift ;;
esac

# The patch series in name order (none is a series too).
series() {
    for p in "$patches"/*.patch; do
        [ -f "$p" ] && echo "$p"
    done
    return 0
}

# sha256 of every patch's name and contents: the cache key.
series_hash() {
    series | while IFS= read -r p; do
        printf '%s\n' "${p##*/}"
        cat "$p"
    done | sha256sum | cut -c1-12
}

key=$PACKAGE-$VERSION-p$(series_hash)
if [ "$mode" = key ]; then
    echo "$key"
    exit 0
fi

cache=${1:?usage: build-llama.sh [--prepare] CACHEDIR | --key}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
pristine=$cache/$PACKAGE-$VERSION
dir=$cache/$key

[ "$mode" = build ] && [ -f "$dir/built" ] && exit 0

# The pinned source, fetched once and shared by every patch series.
if [ ! -f "$pristine/llama.cpp/CMakeLists.txt" ]; then
    echo "llama.cpp: fetching $PACKAGE@$VERSION (checked against tools/packages.sha512)"
    mkdir -p "$pristine"
    rm -rf "$pristine/package" "$pristine/llama.cpp"
    "$root/tools/fetch-package" "$PACKAGE@$VERSION" "$pristine/package"
    bundle=$pristine/package/llama/gitRelease.bundle
    [ -f "$bundle" ] || {
        echo "build-llama.sh: $PACKAGE@$VERSION has no llama/gitRelease.bundle" >&2
        exit 1
    }
    git clone --quiet "$bundle" "$pristine/llama.cpp.tmp" 2>"$pristine/clone.log" || {
        cat "$pristine/clone.log" >&2; rm -rf "$pristine/llama.cpp.tmp"; exit 1; }
    mv "$pristine/llama.cpp.tmp" "$pristine/llama.cpp"
    rm -rf "$pristine/package" "$pristine/clone.log"
    echo "llama.cpp: source $(git -C "$pristine/llama.cpp" rev-parse --short HEAD) in $pristine/llama.cpp"
fi

# The patched tree: a clone of the pinned commit (a clone takes the commit, not whatever
# the pristine work tree holds), the series applied in a scratch copy moved into place
# only when every patch applied.
if [ ! -f "$dir/llama.cpp/CMakeLists.txt" ]; then
    mkdir -p "$dir"
    tmp=$dir/llama.cpp.tmp
    rm -rf "$tmp"
    git clone --quiet --no-checkout "$pristine/llama.cpp" "$tmp" 2>"$dir/clone.log" &&
        git -C "$tmp" checkout --quiet --detach "$COMMIT" 2>>"$dir/clone.log" || {
        echo "build-llama.sh: the source in $pristine/llama.cpp does not hold commit $COMMIT" \
             "of $PACKAGE@$VERSION; delete that directory to fetch it again" >&2
        cat "$dir/clone.log" >&2; rm -rf "$tmp" "$dir/clone.log"; exit 1; }
    rm -f "$dir/clone.log"
    n=0
    for p in "$patches"/*.patch; do
        [ -f "$p" ] || continue
        name=${p##*/}
        if ! git -C "$tmp" apply --check "$p" 2>"$dir/apply.log"; then
            echo "build-llama.sh: patch $name does not apply to $PACKAGE@$VERSION" \
                 "(llama.cpp ${COMMIT%${COMMIT#????????????}}) after the patches before it:" >&2
            sed 's/^/    /' "$dir/apply.log" >&2
            echo "build-llama.sh: update $name against that source; nothing was built" >&2
            rm -rf "$tmp" "$dir/apply.log"
            rmdir "$dir" 2>/dev/null || true
            exit 1
        fi
        git -C "$tmp" apply "$p"
        n=$((n + 1))
        echo "llama.cpp: applied $name"
    done
    rm -f "$dir/apply.log"
    mv "$tmp" "$dir/llama.cpp"
    echo "llama.cpp: $n patch(es) applied in $dir/llama.cpp"
fi
[ "$mode" = prepare ] && exit 0

[ -f "$root/lib/libulpt.so" ] && [ -f "$root/include/ulpt.h" ] || {
    echo "build-llama.sh: llama-server links libulpt: build it first (make)" >&2
    exit 1
}

echo "llama.cpp: configuring (log: $dir/build.log)"
# The library, ggml's CPU backend and the server (with llama.cpp's common code); no
# examples, tests, web UI (nothing downloaded) or TLS.  Only the targets below are built.
nice cmake -S "$dir/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_ULPT_DIR="$root" \
    >"$dir/build.log" 2>&1 || { tail -20 "$dir/build.log" >&2; exit 1; }

echo "llama.cpp: building libllama, ggml and llama-server with $jobs jobs (about 8 minutes on two free cores, half of it the server)"
start=$(date +%s)
# cmake prints "[ NN%] Building ... file.o": one progress line each time the percentage
# moves (read line by line: awk implementations may hold a pipe's input back in blocks).
status=0
{ nice cmake --build "$dir/build" --target llama llama-server -j "$jobs" 2>&1 || echo "BUILD-FAILED"; } |
    tee -a "$dir/build.log" | {
        last=""
        failed=0
        while IFS= read -r line; do
            case "$line" in
            BUILD-FAILED) failed=1 ;;
            "["*"%]"*)
                pct=${line%%\%]*}
                pct=${pct#[}
                pct=$(echo $pct)
                if [ "$pct" != "$last" ]; then
                    case "$line" in
                    */*) file=${line##*/} ;;
                    *) file=${line#*] } ;;
                    esac
                    elapsed=$(( $(date +%s) - start ))
                    printf 'llama.cpp: %3s%%  %4d s  %s\n' "$pct" "$elapsed" "${file%.o}"
                    last=$pct
                fi ;;
            esac
        done
        exit $failed
    } || status=1
if [ "$status" -ne 0 ] || [ ! -e "$dir/build/bin/libllama.so" ] || [ ! -e "$dir/build/bin/llama-server" ]; then
    echo "build-llama.sh: the llama.cpp build failed; the end of $dir/build.log:" >&2
    tail -20 "$dir/build.log" >&2
    exit 1
fi
touch "$dir/built"
echo "llama.cpp: built in $(( $(date +%s) - start )) s: $dir/build/bin"
