"""Step time of first-order prompt tuning inside llama.cpp against the PyTorch host: the
same model (tinylm-llama), task, seed, batch, steps and threads (`make llama-bench`).

    /usr/bin/python3 examples/llama/bench_step.py --host ULPT-LLAMA --gguf F32.gguf TASKDIR

Runs `ulpt-llama tune --json` (first-order, llama_embd_grad) and
examples/llama/torch_tune.py --json alternately, --reps times each, and takes each
engine's fastest run (the machine may be shared: the fastest run is the one least
disturbed).  A step's time is the run's training seconds over its steps (evaluation is
not counted; the first step's graph allocation is).  Prints both times, the ratio
(llama.cpp / PyTorch: below 1 is faster) and, with --json, one JSON line.  Errors: one line
on stderr, exit status 1.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        msg = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError("%s failed: %s" % (" ".join(os.path.basename(x) for x in argv[:2]),
                                              msg[-1] if msg else "status %d" % p.returncode))
    lines = p.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError("%s printed no JSON line" % argv[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("taskdir")
    ap.add_argument("--host", required=True, help="examples/llama/ulpt-llama")
    ap.add_argument("--gguf", required=True, help="tinylm-llama as GGUF")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16, help="examples a step (16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2, help="runs of each engine (2)")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if min(a.steps, a.batch, a.threads, a.reps) < 1:
        ap.error("--steps, --batch, --threads and --reps must be at least 1")
    common = ["--steps", str(a.steps), "--lr", str(a.lr), "--seed", "1", "--json"]
    llama = [a.host, "tune", "--gguf", a.gguf, "--threads", str(a.threads), "--examples",
             str(a.batch), *common, a.taskdir]
    torch = [a.python, os.path.join(HERE, "torch_tune.py"), "--threads", str(a.threads),
             "--batch", str(a.batch), "--skip-baseline", *common, a.taskdir]
    times = {"llama.cpp": [], "pytorch": []}
    try:
        for _ in range(a.reps):
            r = run(llama)
            if r["method"] != "first-order":
                raise RuntimeError("ulpt-llama tuned %s, not first-order: %s"
                                   % (r["method"], r.get("not_first_order", "")))
            times["llama.cpp"].append(r["train_seconds"] / a.steps)
            times["pytorch"].append(run(torch)["train_seconds"] / a.steps)
    except RuntimeError as e:
        print("bench_step: %s" % e, file=sys.stderr)
        return 1
    best = {k: min(v) for k, v in times.items()}
    ratio = best["llama.cpp"] / best["pytorch"]
    task = os.path.basename(os.path.normpath(a.taskdir))
    if a.json:
        print(json.dumps(dict(task=task, steps=a.steps, batch=a.batch, threads=a.threads,
                              reps=a.reps, llama_step_ms=1e3 * best["llama.cpp"],
                              torch_step_ms=1e3 * best["pytorch"], ratio=ratio,
                              llama_runs_ms=[1e3 * t for t in times["llama.cpp"]],
                              torch_runs_ms=[1e3 * t for t in times["pytorch"]])))
    else:
        print("%s, %d steps of %d examples, %d threads, fastest of %d runs each:"
              % (task, a.steps, a.batch, a.threads, a.reps))
        for k in ("llama.cpp", "pytorch"):
            print("  %-10s %7.1f ms a step  (runs: %s)" % (
                k, 1e3 * best[k], ", ".join("%.1f" % (1e3 * t) for t in times[k])))
        print("  llama.cpp / PyTorch: %.2f" % ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
