#!/bin/sh
# Data-parallel training over MPI (examples/mpi/tune_mpi): 2 and 4 ranks must reach the
# parameters of 1 rank with the same global batch, only rank 0 may write files, and a
# checkpoint must resume, bit-identically on the same number of ranks and within the
# tolerance on another.  A rank that fails (at set-up, or in its host during a step) or
# that holds other parameters must stop every rank, with a message.
#
# Tolerance: the ranks differ from one rank only in the order in which float32 sums are
# taken (each rank's examples, backward's sum over tokens, MPI_Allreduce over ranks), so
# the gradient agrees to a relative error delta of a few hundred ulp at most.  AdamW's
# update lr * m/(sqrt(v)+eps) has magnitude at most about lr, and a relative change delta
# in the gradient moves it by about lr*delta, so after N steps the parameters (O(1): Z
# starts N(0,1), the scale at 1) agree to about N*lr*delta.  With N = 20, peak lr = 0.05
# and delta = 1e-5 that is TOL = 1e-5.  One step's update is about 1e-2, so a run that
# dropped or repeated a shard lands far outside it (the midway checkpoint below is
# checked to).  AdamW is all but blind to a gradient scaled by a constant (m/sqrt(v)
# cancels it), so the first step's loss and global gradient norm, which would show a
# shard weighed 1/shard instead of 1/B, are compared too, to a relative 1e-5.
#
#   sh tests/mpi/check-mpi.sh [TUNE_MPI] [PARAM_DIFF] [NAN_MODEL]
set -eu
cd "$(dirname "$0")/../.."
tune=${1:-examples/mpi/tune_mpi}
diff=${2:-tests/mpi/param_diff}
nan_model=${3:-tests/mpi/nan_model}
for f in "$tune" "$diff" "$nan_model"; do
    [ -x "$f" ] || { echo "check-mpi: $f is missing; run make check-mpi" >&2; exit 1; }
done
steps=20
tol=1e-5
# Bounds a run that hangs (a rank stuck in a collective); no run is timed.  A healthy run
# takes seconds, but a loaded machine running 4 oversubscribed ranks must not pass for a
# hang, hence the margin.
limit=600

# Shared memory between the ranks of one machine, without the single-copy mechanism
# (CMA needs ptrace rights that containers often lack), no ssh, no network transports.
mpirun="mpirun --oversubscribe --bind-to none --mca plm isolated --mca pml ob1"
mpirun="$mpirun --mca btl self,vader --mca btl_vader_single_copy_mechanism none"
[ "$(id -u)" -eq 0 ] && mpirun="$mpirun --allow-run-as-root"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Everything below runs in it, under short names (mpirun's command lines are split on
# spaces, and messages name files relative to it).
ln -s "$(realpath "$tune")" "$tmp/tune_mpi"
ln -s "$(realpath "$diff")" "$tmp/param_diff"
ln -s "$(realpath "$nan_model")" "$tmp/nan_model"
ln -s "$(realpath tests/tinylm/fixtures/names)" "$tmp/names"
ln -s "$(realpath examples/tinylm/tinylm.tlm)" "$tmp/tinylm.tlm"
cd "$tmp"
tune=./tune_mpi
diff=./param_diff
nan_model=./nan_model
fail() { echo "check-mpi: FAIL: $*" >&2; exit 1; }
# Ranks write concurrently and mpirun forwards their output as it comes, so the lines of
# different ranks in NAME.log may come in any order: assertions read each rank's own
# output, which mpirun also copies to NAME.out/JOB/rank.R/stdout and stderr.
runs() { # runs NAME MPIRUN-ARGUMENTS...: a bounded run, with mpirun's status
    name=$1; shift
    timeout $limit $mpirun --output-filename "$name.out" "$@" > "$name.log" 2>&1
}
run() { # run NAME MPIRUN-ARGUMENTS...: a bounded run that must succeed
    name=$1; shift
    if ! runs "$name" "$@"; then
        cat "$name.log" >&2
        fail "$name: mpirun $*"
    fi
}
of() { # of NAME RANK stdout|stderr: what rank RANK wrote there in run NAME
    set -- "$1".out/*/rank."$2"/"$3"
    [ -f "$1" ] || { echo "check-mpi: $1 is missing" >&2; return 1; }
    cat "$1"
}
expect() { # expect NAME RANK REGEX WHAT: rank RANK's stderr in run NAME has the line
    of "$1" "$2" stderr | grep -q "$3" || { cat "$1.log" >&2; fail "$4"; }
}
common="names --model tinylm.tlm --steps $steps"

timeout $limit $mpirun -np 2 true > "start.log" 2>&1 || {
    cat "start.log" >&2
    fail "mpirun cannot start two processes here (it needs at least the loopback interface)"
}

# 1, 2 and 4 ranks, each rank told to write its own files: only rank 0's may appear.
run r1 -np 1 "$tune" $common --save "p1.ulpt"
for n in 2 4; do
    mkdir "out$n"
    spec=""
    r=0
    while [ $r -lt $n ]; do
        [ $r -gt 0 ] && spec="$spec :"
        spec="$spec -np 1 $tune $common --checkpoint out$n/ckpt-rank$r.ulpt --every 10 --save out$n/prompt-rank$r.ulpt"
        r=$((r + 1))
    done
    run r$n $spec
    got=$(ls "out$n" | tr '\n' ' ')
    [ "$got" = "ckpt-rank0.ulpt prompt-rank0.ulpt " ] ||
        fail "$n ranks wrote \"$got\"; only rank 0 should write, ckpt-rank0.ulpt and prompt-rank0.ulpt"
    echo "check-mpi: $n ranks: only rank 0 wrote the checkpoint and the prompt"
    "$diff" "p1.ulpt" "out$n/prompt-rank0.ulpt" $tol ||
        fail "$n ranks are further than $tol from 1 rank after $steps steps"
    "$diff" "out$n/prompt-rank0.ulpt" "out$n/ckpt-rank0.ulpt" 0 ||
        fail "the final checkpoint of $n ranks holds other parameters than the final prompt"
done

# The first step's loss and gradient norm: "step    1/20  loss L  |grad| G".
first() { of "$1" 0 stdout | sed -n 's/^step *1\/[0-9]*  loss \([^ ]*\)  |grad| \([^ ]*\)$/\1 \2/p'; }
for n in 2 4; do
    echo "$(first r1) $(first r$n)" | awk -v n=$n '
        NF != 4 { print "check-mpi: FAIL: no first-step line for 1 or " n " ranks"; exit 1 }
        { for (i = 1; i <= 2; i++) {
              d = $i - $(i + 2); if (d < 0) d = -d; a = $i < 0 ? -$i : $i
              if (d > 1e-5 * a) { print "check-mpi: FAIL: step 1 of " n " ranks: loss, |grad| " \
                  $3 ", " $4 " against " $1 ", " $2 " on 1 rank"; exit 1 } }
          print "check-mpi: step 1: loss " $3 ", |grad| " $4 " on " n " ranks; " $1 ", " $2 " on 1" }' ||
        exit 1
done

# Interrupted after step 10 on 2 ranks, resumed on 2 (bit-identical to the straight run)
# and on 4 (within the tolerance of 1 rank).
run stop -np 2 "$tune" $common --stop-at 10 --checkpoint "mid.ulpt"
if "$diff" "p1.ulpt" "mid.ulpt" $tol; then
    fail "the step-10 checkpoint is within $tol of the step-20 prompt: the tolerance tells nothing"
fi
run resume2 -np 2 "$tune" $common --resume "mid.ulpt" --save "resumed2.ulpt"
"$diff" "out2/prompt-rank0.ulpt" "resumed2.ulpt" 0 ||
    fail "2 ranks resumed at step 10 differ from 2 ranks straight through"
run resume4 -np 4 "$tune" $common --resume "mid.ulpt" --save "resumed4.ulpt"
"$diff" "p1.ulpt" "resumed4.ulpt" $tol ||
    fail "4 ranks resumed from 2 ranks' checkpoint are further than $tol from 1 rank"
of resume4 0 stdout | grep -q "^steps 11\.\.20:" || fail "the resumed run did not start at step 11"
if runs wrong -np 2 "$tune" $common --batch 4 --resume mid.ulpt; then
    fail "a checkpoint resumed with another global batch"
fi
for r in 0 1; do # every rank reads the checkpoint and refuses it
    expect wrong $r "^tune_mpi: rank $r: mid.ulpt was started with --seed 1 --batch 8 --steps $steps" \
        "no message from rank $r for a resume with another global batch"
done
echo "check-mpi: a checkpoint resumes bit-identically on 2 ranks, within $tol on 4, and not with another batch"

# One rank failing at set-up (its model file is missing) stops every rank, with its message.
if runs bad -np 1 "$tune" $common : -np 1 "$tune" $common --model "none.tlm"; then
    fail "a run whose rank 1 has no model succeeded"
fi
expect bad 1 "^tune_mpi: rank 1: .*none.tlm" "no message from rank 1"
echo "check-mpi: a rank that fails at set-up stops all ranks with its message"

# Ranks that do not start from the same prompt (rank 1 seeded differently) are refused.
if runs seed -np 1 "$tune" $common : -np 1 "$tune" $common --seed 2; then
    fail "ranks with different seeds trained together"
fi
expect seed 0 "^tune_mpi: rank 0: rank 1's parameters differ from rank 0's" \
    "no message for ranks that hold different parameters"
echo "check-mpi: ranks that hold different parameters are refused before the first step"

# A host that fails inside a step (rank 1's model gives NaN losses) poisons the sum: every
# rank's optimizer step refuses it, all stop at step 1, and no checkpoint is written.
"$nan_model" tinylm.tlm nan.tlm
if runs nan -np 1 "$tune" $common --checkpoint failed.ulpt --every 1 : \
    -np 1 "$tune" $common --model nan.tlm; then
    fail "a run whose rank 1 computes NaN losses succeeded"
fi
expect nan 1 "^tune_mpi: rank 1: step 1: example on line [0-9]* of names/train.tsv: " \
    "no message from rank 1 at step 1"
expect nan 0 "^tune_mpi: rank 0: step 1: .*(another rank failed)" "no message from rank 0 at step 1"
[ ! -e failed.ulpt ] || fail "a checkpoint was written after a failed step"
echo "check-mpi: a rank whose host fails in a step stops all ranks at that step, nothing saved"
echo "check-mpi: 1, 2 and 4 ranks agree to $tol after $steps steps; checkpoints resume"
