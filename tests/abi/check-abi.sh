#!/bin/sh
# check-abi.sh -- libulpt.so.1 keeps every promise it made (run by `make check-abi`).
#
#   1. Struct layouts (layout.c) are frozen at compile time.
#   2. Against each released ABI (libulpt-1.0.abi, libulpt-1.1.abi: what 1.0.0 and 1.1.0
#      shipped, never regenerated): nothing removed, nothing changed; additions are fine.
#      This is what lets a program built against an older release run on this library.
#   3. Symbol versions: each function the header declares is exported; each released
#      node (ulpt_1.0, ulpt_1.1) holds exactly that release's functions, with the version
#      the release gave them; everything added since sits in the newest node.
#   4. Against libulpt-1.2.abi, the ABI of the release being made: exactly equal, so
#      every addition is deliberate and reviewed in the baseline's diff.
#   5. A program compiled against 1.0's header (tests/abi/1.0/ulpt.h, that release's
#      header verbatim) links to this library, needs only ulpt_1.0 symbols, and runs.
set -eu
CC=${CC:-cc}
lib=lib/libulpt.so.1
released="1.0 1.1"             # frozen baselines, oldest first
current=tests/abi/libulpt-1.2.abi # the release being made
out=tests/abi/out
mkdir -p $out

# The opaque handles' structs (lib/internal.h) are private: changes inside them are not
# ABI changes (private.suppr).
suppr="--suppressions tests/abi/private.suppr"

fail() { echo "check-abi: FAIL: $*" >&2; exit 1; }

# 1
$CC -std=c11 -Iinclude tests/abi/layout.c -o $out/layout ||
    fail "a public struct changed layout; restore it, or bump the soname deliberately"

# 2
added=
for v in $released; do
    base=tests/abi/libulpt-$v.abi
    rc=0
    abidiff $suppr --no-added-syms $base $lib > $out/abidiff-$v.txt || rc=$?
    if [ $rc -ne 0 ]; then
        cat $out/abidiff-$v.txt
        fail "a symbol of $v was removed or changed (abidiff $rc): $v callers would break." \
            "Restore it; never regenerate $base"
    fi
    sed -n "s/.*<elf-symbol name='\([a-z0-9_]*\)' version='\([a-z0-9_.]*\)'.*/\1 \2/p" \
        $base | sort > $out/symbols-$v.txt
done
newest=$(echo $released | awk '{print $NF}')
added=$(abidiff $suppr tests/abi/libulpt-$newest.abi $lib | grep -c '^  \[A\]' || true)

# 3
nm -D --defined-only --with-symbol-versions $lib | awk '$2 == "T" {print $3}' |
    sed 's/@@*/ /' | sort > $out/exports.txt
sed -n 's/^ULPT_API[^(]*[ *]\(ulpt_[a-z0-9_]*\)(.*/\1/p' include/ulpt.h | sort -u > $out/declared.txt
missing=$(awk '{print $1}' $out/exports.txt | comm -13 - $out/declared.txt)
[ -z "$missing" ] || fail "declared in include/ulpt.h but not exported (add them to the newest" \
    "node of lib/libulpt.map): $missing"
unversioned=$(awk 'NF < 2 {print $1}' $out/exports.txt)
[ -z "$unversioned" ] || fail "exported without a symbol version: $unversioned"
counts=
for v in $released; do
    moved=$(comm -23 $out/symbols-$v.txt $out/exports.txt | tr '\n' ' ')
    [ -z "$moved" ] || fail "released symbols not exported with their version: $moved"
    wrong=$(awk -v n="ulpt_$v" '$2 == n' $out/exports.txt | comm -23 - $out/symbols-$v.txt |
        awk '{print $1}' | tr '\n' ' ')
    [ -z "$wrong" ] || fail "new functions in the released node ulpt_$v (they belong in the" \
        "newest): $wrong"
    counts="$counts${counts:+, }$v's $(awk -v n="ulpt_$v" '$2 == n' $out/symbols-$v.txt | wc -l)"
done

# 4
rc=0
abidiff $suppr $current $lib > $out/abidiff-current.txt || rc=$?
if [ $rc -ne 0 ]; then
    cat $out/abidiff-current.txt
    fail "the ABI differs from $current (abidiff $rc).  If you added a function" \
        "on purpose (listed in lib/libulpt.map's newest node), run 'make abi-baseline' and" \
        "commit $current; if a function changed or went, restore it"
fi

# 5
$CC -std=c11 -Wall -Wextra -Werror -Itests/abi/1.0 tests/abi/caller_1_0.c -o $out/caller_1_0 \
    -Llib -lulpt -Wl,-rpath,"$(pwd)/lib" -lm
needs=$(objdump -T $out/caller_1_0 | sed -n 's/.*(\(ulpt_[0-9.]*\)) *ulpt_.*/\1/p' | sort -u | tr '\n' ' ')
[ "$needs" = "ulpt_1.0 " ] || fail "the 1.0 program needs symbol versions '$needs', expected ulpt_1.0 only"
$out/caller_1_0 || fail "a program built against 1.0's header failed on this library"

echo "check-abi: layouts unchanged; functions of each release intact in their nodes ($counts;" \
    "+$added added since $newest, in $(awk '{print $2}' $out/exports.txt | sort -u | tail -1));" \
    "equal to $current; a 1.0 program runs"
