#!/bin/sh
# make llama-demo, after llama.cpp is built and tinylm converted:
#     examples/llama/demo.sh MODEL.gguf MODEL-GELU-ZERO.gguf ULPT-LLAMA LLAMA-SHAPED.gguf
# 1. the converted model's logits against tinylm's C forward;
# 2. the names prompt `make demo` trains, and a spam prompt tuned the same way, served
#    through llama.cpp and through `tune --load`;
# 3. several prompts (two tasks, two seeds) served at once, against one at a time;
# 4. a prompt tuned inside llama.cpp with forward passes only, against the first-order
#    prompt tinylm's own backward trains with the same budget of examples;
# 5. the names prompt served on quantized copies of the model (llama_model_quantize);
# 6. first-order tuning inside llama.cpp (llama_embd_grad) on tinylm-llama, float32 and
#    Q4_K_M, and why tinylm (gpt2) falls back to forward-only.
# Prompts are kept in examples/tinylm/cache and reused by later runs.
set -eu
gguf=$1
gelu0=$2
host=$3
llama_gguf=$4
# llama.cpp's CPU backend runs its threads with OpenMP, whose idle threads spin: on cores
# shared with other work that makes two threads slower than one by orders of magnitude.
# Passive waiting keeps both threads useful (LLAMA_THREADS: how many, default one per CPU).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
threads=${LLAMA_THREADS:-$(getconf _NPROCESSORS_ONLN)}
py=${PYTHON:-/usr/bin/python3}
tlm=examples/tinylm/tinylm.tlm
tune=examples/tinylm/tune
tasks=examples/tinylm/cache/tasks
cache=examples/tinylm/cache
tenants=$cache/llama-tenants

json() { # KEY: the value of KEY in the JSON line on stdin
    "$py" -c 'import json, sys
print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"
}

# a prompt tuned by tinylm's own backward: TASK SEED STEPS PATH
tuned() {
    [ -f "$4" ] && return 0
    echo "tuning $4 with tinylm's backward ($3 steps of 16)"
    "$tune" "$tasks/$1" --seed "$2" --steps "$3" --lr 0.05 --skip-baseline --quiet --save "$4" \
        >/dev/null
}

echo "== 1. tinylm in llama.cpp: logits against tinylm's C forward"
"$host" check --gguf "$gguf" --tlm "$tlm" --gelu-zero-gguf "$gelu0" --threads "$threads"

echo
echo "== 2. serving a prompt: llama.cpp against tune --load"
tuned names 1 400 "$cache/names-rank2.ulpt"   # what make demo trains
tuned spam 1 400 "$cache/spam-rank2.ulpt"
for task in names spam; do
    p=$cache/$task-rank2.ulpt
    ref=$("$tune" "$tasks/$task" --load "$p" --skip-baseline --json | json acc_test)
    out=$("$host" serve --gguf "$gguf" --prompt "$p" --tlm "$tlm" --threads "$threads" --json \
        "$tasks/$task")
    echo "$out" | "$py" -c '
import json, sys
s = json.loads(sys.stdin.read().strip().splitlines()[-1])
ref, task = float(sys.argv[1]), sys.argv[2]
gap = 100 * abs(s["acc_llama"] - ref)
print("%s: test accuracy %.2f%% through llama.cpp, %.2f%% through tune --load (gap %.2f points)"
      % (task, 100 * s["acc_llama"], 100 * ref, gap))
print("  same label on %.2f%% of %d test examples; label logits within %.2g (%.2g relative)"
      % (100 * s["label_agreement"], s["examples"], s["max_abs_label_logit"],
         s["max_rel_label_logit"]))
sys.exit(0 if gap <= 0.5 and s["label_agreement"] >= 0.99 else 1)
' "$ref" "$task" || { echo "llama-demo: $task: llama.cpp and tune --load disagree" >&2; exit 1; }
done

echo
echo "== 3. many tenants: one model, several prompts, one llama_decode batch"
mkdir -p "$tenants"
tuned names 2 100 "$cache/names-rank2-seed2.ulpt"
tuned spam 2 100 "$cache/spam-rank2-seed2.ulpt"
tuned sotu 1 100 "$cache/sotu-rank2.ulpt"
for p in names-rank2 spam-rank2 names-rank2-seed2 spam-rank2-seed2 sotu-rank2; do
    cp "$cache/$p.ulpt" "$tenants/"
done
for b in 8 16; do
    "$host" tenants --gguf "$gguf" --batch $b --requests 512 --threads "$threads" \
        "$tenants" "$tasks"
done

echo
echo "== 4. tuning inside llama.cpp with forward passes only"
# The same compute: tinylm's backward costs about two forward passes, so 400 first-order
# steps of 16 examples (what make demo runs) match 600 forward-only steps of 2 x 16.
fo=$("$tune" "$tasks/names" --steps 400 --lr 0.05 --skip-baseline --quiet --json)
zo=$("$host" tune --gguf "$gguf" --threads "$threads" --steps 600 --examples 16 --directions 1 \
    --lr 0.05 --mu 0.01 --save "$cache/names-zo.ulpt" --json "$tasks/names")
echo "tinylm (gpt2) in llama.cpp: not first-order: $(echo "$zo" | json not_first_order)"
echo "$fo" | "$py" -c '
import json, sys
fo = json.loads(sys.stdin.read().strip().splitlines()[-1])
zo = json.loads(sys.argv[1].strip().splitlines()[-1])
print("names, rank 2, 16 rows, seed 1:")
print("  first-order, tinylm backward:  %.1f%% test accuracy, %d steps of %d, %.0f s"
      % (100 * fo["acc_test"], fo["steps"], fo["batch"], fo["train_seconds"]))
print("  forward-only inside llama.cpp: %.1f%% test accuracy (from %.1f%%), %d steps of"
      " 2 x %d sequences, %.0f s (%.0f s in llama_decode)"
      % (100 * zo["acc_test"], 100 * zo["acc_before"], zo["steps"], zo["batch"],
         zo["train_seconds"], zo["decode_seconds"]))
' "$zo"

echo
echo "== 5. the same prompt on quantized weights"
"$host" identity --gguf "$gguf"
for q in Q8_0 Q4_0 Q4_K_M; do
    qg=$cache/tinylm-$q.gguf
    [ -f "$qg" ] || "$host" quantize "$gguf" "$qg" "$q" >/dev/null
    "$host" serve --gguf "$qg" --prompt "$cache/names-rank2.ulpt" --threads "$threads" \
        "$tasks/names"
done

echo
echo "== 6. first-order tuning inside llama.cpp: tinylm-llama (Llama-shaped)"
# llama_embd_grad (examples/llama/patches) returns dL/dE through ggml's own autodiff, so
# ulpt_train_step runs inside llama.cpp; the same seed, steps and rate on llama.cpp's
# Q4_K_M quantization of the model (docs/RESULTS.md: three tasks, three seeds, PyTorch).
q4=$cache/tinylm-llama-Q4_K_M.gguf
[ -f "$q4" ] || "$host" quantize "$llama_gguf" "$q4" Q4_K_M >/dev/null
for g in "$llama_gguf" "$q4"; do
    echo "$(basename "$g"), $(wc -c <"$g") bytes:"
    "$host" tune --gguf "$g" --threads "$threads" --steps 100 --examples 16 --lr 0.1 \
        --seed 1 "$tasks/names"
done
