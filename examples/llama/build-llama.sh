#!/bin/sh
# Build llama.cpp's libllama and ggml for the CPU, once, into a cache that later runs
# reuse.  llama.cpp's source comes from the npm package node-llama-cpp at the pinned
# version (its package/llama/gitRelease.bundle), fetched by tools/fetch-package, which
# checks the tarball against the sha512 committed in tools/packages.sha512.
#
#     examples/llama/build-llama.sh CACHEDIR
#
# CACHEDIR/node-llama-cpp-VERSION/ gets llama.cpp/ (the cloned source, with gguf-py),
# build/bin/ (libllama.so, libggml*.so), build.log and the stamp `built` once complete;
# with the stamp present this does nothing.  Progress goes to stdout as the build
# advances (about 8 minutes on two free cores).  LLAMA_JOBS (default 2) sets the
# parallel jobs.  Debian's cmake, a C/C++ compiler, git and npm are needed
# (.ci/install-deps llama).
set -eu

PACKAGE=node-llama-cpp
VERSION=3.21.1
cache=${1:?usage: build-llama.sh CACHEDIR}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir=$cache/$PACKAGE-$VERSION
jobs=${LLAMA_JOBS:-2}

[ -f "$dir/built" ] && exit 0
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

if [ ! -f "$dir/llama.cpp/CMakeLists.txt" ]; then
    echo "llama.cpp: fetching $PACKAGE@$VERSION (checked against tools/packages.sha512)"
    rm -rf "$dir/package" "$dir/llama.cpp"
    "$root/tools/fetch-package" "$PACKAGE@$VERSION" "$dir/package"
    bundle=$dir/package/llama/gitRelease.bundle
    [ -f "$bundle" ] || {
        echo "build-llama.sh: $PACKAGE@$VERSION has no llama/gitRelease.bundle" >&2
        exit 1
    }
    git clone --quiet "$bundle" "$dir/llama.cpp.tmp" 2>"$dir/clone.log" || {
        cat "$dir/clone.log" >&2; rm -rf "$dir/llama.cpp.tmp"; exit 1; }
    mv "$dir/llama.cpp.tmp" "$dir/llama.cpp"
    rm -rf "$dir/package" "$dir/clone.log"
    echo "llama.cpp: source $(git -C "$dir/llama.cpp" rev-parse --short HEAD) in $dir/llama.cpp"
fi

echo "llama.cpp: configuring (log: $dir/build.log)"
# Only the library and ggml's CPU backend: no tools, examples, server or tests.
nice cmake -S "$dir/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    >"$dir/build.log" 2>&1 || { tail -20 "$dir/build.log" >&2; exit 1; }

echo "llama.cpp: building libllama and ggml with $jobs jobs (about 8 minutes on two free cores)"
start=$(date +%s)
# cmake prints "[ NN%] Building ... file.o": one progress line each time the percentage
# moves (read line by line: awk implementations may hold a pipe's input back in blocks).
status=0
{ nice cmake --build "$dir/build" --target llama -j "$jobs" 2>&1 || echo "BUILD-FAILED"; } |
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
if [ "$status" -ne 0 ] || [ ! -e "$dir/build/bin/libllama.so" ]; then
    echo "build-llama.sh: the llama.cpp build failed; the end of $dir/build.log:" >&2
    tail -20 "$dir/build.log" >&2
    exit 1
fi
touch "$dir/built"
echo "llama.cpp: built in $(( $(date +%s) - start )) s: $dir/build/bin"
