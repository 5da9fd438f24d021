#!/bin/sh
# The shared library exports ulpt_* names only, with the soname libulpt.so.1.
set -eu
lib=lib/libulpt.so.1
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^ulpt_' || true)
if [ -n "$bad" ]; then
    echo "check-exports: FAIL: symbols outside ulpt_*: $bad" >&2
    exit 1
fi
soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$soname" != libulpt.so.1 ]; then
    echo "check-exports: FAIL: soname is '$soname', expected libulpt.so.1" >&2
    exit 1
fi
count=$(nm -D --defined-only "$lib" | grep -c ' T ulpt_')
echo "check-exports: ok: $count symbols, all ulpt_*, soname $soname"
