#!/bin/sh
# check-layers.sh -- the call and include graph of lib/, and no cycle in it (make
# check-layers).  A file calls another when its object file needs a symbol the other's
# defines (nm); a file includes the headers cc -MM lists.  Prints both graphs, then
# fails if the call graph between files has a cycle (tsort finds it).
set -eu
CC=${CC:-cc}
out=lib/obj/layers
mkdir -p $out
: > $out/defs.txt
: > $out/calls.txt
for o in lib/obj/*.o; do
    f=$(basename $o .o)
    nm --defined-only $o | awk -v f=$f '$2 ~ /^[TDBR]$/ {print $3, f}' >> $out/defs.txt
done
sort -o $out/defs.txt $out/defs.txt
for o in lib/obj/*.o; do
    f=$(basename $o .o)
    nm -u $o | awk '{print $2}' | sort -u | join - $out/defs.txt |
        awk -v f=$f '$2 != f {print f, $2}' >> $out/calls.txt
done
sort -u -o $out/calls.txt $out/calls.txt
echo "check-layers: calls between lib/ files (caller: callees)"
awk '{c[$1] = c[$1] " " $2} END {for (f in c) print "  " f ":" c[f]}' $out/calls.txt | sort
echo "check-layers: includes (file: lib headers)"
for c in lib/*.c; do
    $CC -MM -Iinclude $c | tr -d '\\\n' | tr ' ' '\n' | grep '^lib/.*\.h$' | sed 's|lib/||' |
        tr '\n' ' ' | sed "s|^|  $(basename $c): |; s| *$||"
    echo
done
for h in lib/*.h; do
    inc=$(sed -n 's/^#include "\([a-z]*\.h\)".*/\1/p' $h | grep -v '^ulpt.h$' | tr '\n' ' ')
    echo "  $(basename $h): $inc"
    for i in $inc; do echo "$(basename $h) $i"; done >> $out/calls.txt.h
done
rm -f $out/calls.txt.h
if ! tsort $out/calls.txt > $out/order.txt 2> $out/cycles.txt; then
    cat $out/cycles.txt >&2
    echo "check-layers: FAIL: the call graph of lib/ has a cycle (above): a lower file calls a higher one" >&2
    exit 1
fi
echo "check-layers: no cycle; $(wc -l < $out/calls.txt) calls between $(ls lib/obj/*.o | wc -l) files"
