#!/bin/sh
# `make install` into a scratch prefix, then build a program against the installed copy
# through pkg-config, dynamically and statically, and run both.
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
make --no-print-directory -s install PREFIX="$prefix" >/dev/null
# DESTDIR stages under another root without changing the recorded prefix
make --no-print-directory -s install PREFIX=/usr/local DESTDIR="$tmp/stage" >/dev/null
test -f "$tmp/stage/usr/local/include/ulpt.h"
test -L "$tmp/stage/usr/local/lib/libulpt.so.1"
grep -q '^prefix=/usr/local$' "$tmp/stage/usr/local/lib/pkgconfig/ulpt.pc"

cat > "$tmp/hello.c" <<'C'
#include <stdio.h>
#include <ulpt.h>
int main(void)
{
    ulpt_prompt_options o = ULPT_PROMPT_OPTIONS_INIT;
    o.n_tokens = 10, o.dim = 64;
    ulpt_prompt *p;
    if (ulpt_prompt_create(&p, &o) != ULPT_OK) {
        fprintf(stderr, "%s\n", ulpt_last_error());
        return 1;
    }
    float e[10 * 64];
    ulpt_prompt_forward(p, e, 64);
    printf("libulpt %s: %zu parameters\n", ulpt_version_string(), ulpt_prompt_num_params(p));
    ulpt_prompt_free(p);
    return ulpt_version() == ULPT_VERSION_NUMBER ? 0 : 1;
}
C
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
cc -o "$tmp/hello" "$tmp/hello.c" $(pkg-config --cflags --libs ulpt)
LD_LIBRARY_PATH="$prefix/lib" "$tmp/hello" | grep -q 'libulpt 1\..*: 148 parameters'
ldd_out=$(LD_LIBRARY_PATH="$prefix/lib" ldd "$tmp/hello" | grep libulpt)
case "$ldd_out" in *"$prefix/lib/libulpt.so.1"*) ;; *) echo "check-install: FAIL: $ldd_out" >&2; exit 1 ;; esac
# --static lists the private dependencies a static link needs; take libulpt.a itself
cc -o "$tmp/hello-static" "$tmp/hello.c" $(pkg-config --cflags ulpt) \
    $(pkg-config --static --libs ulpt | sed 's/-lulpt/-l:libulpt.a/')
"$tmp/hello-static" | grep -q '148 parameters'
if ldd "$tmp/hello-static" | grep -q libulpt; then
    echo "check-install: FAIL: the static build still loads libulpt.so" >&2
    exit 1
fi
"$prefix/bin/ulpt" --version | grep -q '^ulpt 1\.'
# The Python package, in PREFIX/lib/pythonX.Y/dist-packages, finds PREFIX/lib/libulpt.so.1
# beside it with no help from the environment (unless a system copy comes first).
pydir=$(echo "$prefix"/lib/python3*/dist-packages)
test -f "$pydir/ulpt/__init__.py" && test -d "$pydir"/ulpt-*.dist-info
test -f "$tmp"/stage/usr/local/lib/python3*/dist-packages/ulpt/__init__.py
found=$(cd / && env -u ULPT_LIBRARY -u LD_LIBRARY_PATH PYTHONPATH="$pydir" ${PYTHON:-/usr/bin/python3} \
    -c 'import ulpt; print(ulpt.version(), ulpt.library_path)')
case "$found" in
"1."*" $prefix/lib/libulpt.so.1") ;;
*" libulpt.so.1") ldconfig -p | grep -q libulpt.so.1 ||
    { echo "check-install: FAIL: the Python package loaded $found" >&2; exit 1; } ;;
*) echo "check-install: FAIL: the Python package loaded $found" >&2; exit 1 ;;
esac
test -f "$prefix/share/man/man1/ulpt.1"
echo "check-install: ok: pkg-config builds against the installed copy (shared and static) run; ulpt(1) runs; the Python package imports"
