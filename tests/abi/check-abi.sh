#!/bin/sh
# check-abi.sh -- libulpt.so.1 keeps every promise it made (run by `make check-abi`).
#
#   1. Struct layouts (layout.c) are frozen at compile time.
#   2. Against libulpt-1.0.abi, the ABI 1.0.0 shipped and never regenerated: nothing
#      removed, nothing changed, no 1.0 symbol moved to another version node; additions
#      are fine.  This is what lets a program built against 1.0 run on this library.
#   3. Symbol versions: each function the header declares is exported; the ulpt_1.0
#      node holds exactly 1.0's functions, everything added since sits in a later node.
#   4. Against libulpt-1.1.abi, the ABI of the release being made: exactly equal, so
#      every addition is deliberate and reviewed in the baseline's diff.
#   5. A program compiled against 1.0's header (tests/abi/1.0/ulpt.h, that release's
#      header verbatim) links to this library, needs only ulpt_1.0 symbols, and runs.
set -eu
CC=${CC:-cc}
lib=lib/libulpt.so.1
base10=tests/abi/libulpt-1.0.abi
base11=tests/abi/libulpt-1.1.abi
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
rc=0
abidiff $suppr --no-added-syms $base10 $lib > $out/abidiff-1.0.txt || rc=$?
if [ $rc -ne 0 ]; then
    cat $out/abidiff-1.0.txt
    fail "a symbol of 1.0 was removed, changed or moved (abidiff $rc): 1.0 callers would break." \
        "Restore it; never regenerate $base10"
fi
added=$(abidiff $suppr $base10 $lib | grep -c '^  \[A\]' || true)

# 3
nm -D --defined-only --with-symbol-versions $lib | awk '$2 == "T" {print $3}' |
    sed 's/@@*/ /' | sort > $out/exports.txt
sed -n "s/.*<elf-symbol name='\([a-z0-9_]*\)'.*/\1/p" $base10 | sort > $out/symbols-1.0.txt
sed -n 's/^ULPT_API[^(]*[ *]\(ulpt_[a-z0-9_]*\)(.*/\1/p' include/ulpt.h | sort -u > $out/declared.txt
missing=$(awk '{print $1}' $out/exports.txt | comm -13 - $out/declared.txt)
[ -z "$missing" ] || fail "declared in include/ulpt.h but not exported (add them to the newest" \
    "node of lib/libulpt.map): $missing"
wrong=$(awk '$2 == "ulpt_1.0" {print $1}' $out/exports.txt | comm -23 - $out/symbols-1.0.txt)
[ -z "$wrong" ] || fail "new functions in the ulpt_1.0 node (they belong in the newest): $wrong"
unversioned=$(awk 'NF < 2 {print $1}' $out/exports.txt)
[ -z "$unversioned" ] || fail "exported without a symbol version: $unversioned"

# 4
rc=0
abidiff $suppr $base11 $lib > $out/abidiff-1.1.txt || rc=$?
if [ $rc -ne 0 ]; then
    cat $out/abidiff-1.1.txt
    fail "the ABI differs from $base11 (abidiff $rc).  If you added a function" \
        "on purpose (listed in lib/libulpt.map's newest node), run 'make abi-baseline' and" \
        "commit $base11; if a function changed or went, restore it"
fi

# 5
$CC -std=c11 -Wall -Wextra -Werror -Itests/abi/1.0 tests/abi/caller_1_0.c -o $out/caller_1_0 \
    -Llib -lulpt -Wl,-rpath,"$(pwd)/lib" -lm
needs=$(objdump -T $out/caller_1_0 | sed -n 's/.*(\(ulpt_[0-9.]*\)) *ulpt_.*/\1/p' | sort -u | tr '\n' ' ')
[ "$needs" = "ulpt_1.0 " ] || fail "the 1.0 program needs symbol versions '$needs', expected ulpt_1.0 only"
$out/caller_1_0 || fail "a program built against 1.0's header failed on this library"

echo "check-abi: layouts unchanged; 1.0's $(wc -l < $out/symbols-1.0.txt) functions intact" \
    "(+$added added since, none in ulpt_1.0); equal to $base11; a 1.0 program runs"
