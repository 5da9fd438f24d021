#!/usr/bin/env python3
"""`make results`: ULPT against vanilla prompt tuning on tinylm's three tasks.

For every task and method it runs examples/tinylm/tune, and writes docs/RESULTS.md, the
plot docs/results/accuracy_vs_params.png and every run's JSON line in
docs/results/runs.jsonl.  The protocol (the same for every method):

  * 16 soft tokens, 300 AdamW steps of batch 16, 10% warmup then linear decay, weight
    decay 1e-5, gradient clipping at norm 1;
  * learning-rate search: the grid LRS with seed 1, the best by validation accuracy
    (ties: the smaller learning rate); then seeds 2 and 3 at that rate; the test
    accuracy is reported as the mean and standard deviation over the three seeds;
  * methods: no prompt; vanilla (identity projection, n x d trainable); ULPT rank 2, 8
    and 32; ULPT rank 2 without scale and shift.

Runs already in runs.jsonl are not repeated, so an interrupted run resumes; --fresh starts
over.  Two runs go at a time (--jobs), one thread each.

    results.py [--fresh] [--jobs N]          (Python standard library and gnuplot)
"""
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
TUNE = os.environ.get("TUNE", os.path.join(HERE, "tune"))
TASKS_DIR = os.path.join(HERE, "cache", "tasks")
OUT = os.path.join(ROOT, "docs", "results")
RUNS = os.path.join(OUT, "runs.jsonl")
PLOT = os.path.join(OUT, "accuracy_vs_params.png")
REPORT = os.path.join(ROOT, "docs", "RESULTS.md")

TASKS = ["names", "spam", "sotu"]
TOKENS, STEPS, BATCH = 16, 300, 16
LRS = [0.01, 0.05, 0.25]
SEEDS = [1, 2, 3]
# name, label, tune arguments
METHODS = [
    ("none", "no prompt", ["--method", "none"]),
    ("vanilla", "vanilla prompt tuning", ["--method", "vanilla"]),
    ("ulpt2", "ULPT r=2", ["--rank", "2"]),
    ("ulpt8", "ULPT r=8", ["--rank", "8"]),
    ("ulpt32", "ULPT r=32", ["--rank", "32"]),
    ("ulpt2-noss", "ULPT r=2, no scale/shift", ["--rank", "2", "--no-scale-shift"]),
]


def key(task, method, lr, seed):
    return "%s/%s/lr=%g/seed=%d" % (task, method, lr, seed)


def load_runs():
    runs = {}
    if os.path.exists(RUNS):
        with open(RUNS) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if r["method"] != "none" and (r["steps"], r["tokens"], r["batch"]) != \
                            (STEPS, TOKENS, BATCH):
                        raise SystemExit("results: %s in %s was run with other settings; "
                                         "start over with --fresh" % (r["key"], RUNS))
                    runs[r["key"]] = r
    return runs


def run_one(task, method, lr, seed):
    args = dict((m[0], m[2]) for m in METHODS)[method]
    prompt = os.path.join(OUT, "tmp-%s-%s-%g-%d.ulpt" % (task, method, lr, seed))
    cmd = [TUNE, os.path.join(TASKS_DIR, task), "--model", os.path.join(HERE, "tinylm.tlm"),
           "--tokens", str(TOKENS), "--steps", str(STEPS), "--batch", str(BATCH),
           "--lr", repr(lr), "--seed", str(seed), "--threads", "1", "--valid", "--json", "--skip-baseline"]
    cmd += args
    if method != "none":
        cmd += ["--save", prompt]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if os.path.exists(prompt):
        os.remove(prompt)
    if p.returncode != 0:
        raise SystemExit("results: %s failed (exit status %d): %s"
                         % (" ".join(cmd), p.returncode, p.stderr.strip()))
    r = json.loads(p.stdout)
    r["key"] = key(task, method, lr, seed)
    r["method"] = method
    r["wall_seconds"] = round(time.time() - t0, 3)
    return r


class Runner:
    def __init__(self, jobs):
        self.runs = load_runs()
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.start = time.time()
        self.ran = 0

    def batch(self, specs):
        """Run the (task, method, lr, seed) specs not yet done; record each as it ends."""
        todo = [s for s in specs if key(*s) not in self.runs]
        self.ran += len(todo)
        futures = [self.pool.submit(run_one, *s) for s in todo]
        for fut in as_completed(futures):  # record each as soon as it ends
            r = fut.result()
            self.runs[r["key"]] = r
            with open(RUNS, "a") as f:
                f.write(json.dumps(r, sort_keys=True) + "\n")
            print("results: %6.0fs  %-40s valid %.3f  test %.3f  %.1fs"
                  % (time.time() - self.start, r["key"], r["acc_valid"], r["acc_test"],
                     r["train_seconds"]), flush=True)

    def get(self, task, method, lr, seed):
        return self.runs[key(task, method, lr, seed)]


def choose_lr(runner, task, method):
    best = None
    for lr in LRS:
        acc = runner.get(task, method, lr, SEEDS[0])["acc_valid"]
        if best is None or acc > best[1]:
            best = (lr, acc)
    return best[0]


def mean_std(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt_acc(ms):
    return "%.1f ± %.1f" % (100 * ms[0], 100 * ms[1])


def main():
    jobs = 2
    if "--jobs" in sys.argv:
        jobs = int(sys.argv[sys.argv.index("--jobs") + 1])
    os.makedirs(OUT, exist_ok=True)
    if "--fresh" in sys.argv and os.path.exists(RUNS):
        os.remove(RUNS)
    wall = time.time()
    runner = Runner(jobs)
    trained = [m[0] for m in METHODS if m[0] != "none"]
    # no prompt: nothing to tune or seed, one evaluation per task
    runner.batch([(t, "none", LRS[0], 1) for t in TASKS])
    # learning-rate search (seed 1), then the other seeds at the chosen rate
    runner.batch([(t, m, lr, SEEDS[0]) for t in TASKS for m in trained for lr in LRS])
    chosen = {(t, m): choose_lr(runner, t, m) for t in TASKS for m in trained}
    runner.batch([(t, m, chosen[t, m], s) for t in TASKS for m in trained for s in SEEDS[1:]])
    elapsed = time.time() - wall
    summary = os.path.join(OUT, "summary.json")
    if runner.ran == 0 and os.path.exists(summary):
        with open(summary) as f:  # nothing new was run: keep the time of the run that did
            elapsed = json.load(f)["seconds"]

    # rows[task][method] = dict of figures over the three seeds
    rows = {}
    for t in TASKS + ["average"]:
        rows[t] = {}
    for m, label, _ in METHODS:
        # the runs behind each task's figures, one per seed (no prompt: the one evaluation)
        by_task = {t: [runner.get(t, m, LRS[0], 1)] * len(SEEDS) if m == "none" else
                      [runner.get(t, m, chosen[t, m], s) for s in SEEDS] for t in TASKS}
        per_seed_avg = [statistics.mean(by_task[t][i]["acc_test"] for t in TASKS)
                        for i in range(len(SEEDS))]
        for t, rs in by_task.items():
            rows[t][m] = {
                "label": label, "params": rs[0]["params"], "bytes": rs[0]["file_bytes"],
                "acc": mean_std([r["acc_test"] for r in rs]),
                "time": statistics.mean(r["train_seconds"] for r in rs),
                "ulpt": statistics.mean(r["ulpt_seconds"] for r in rs),
                "lr": None if m == "none" else chosen[t, m],
                "majority": rs[0]["majority"],
            }
        rows["average"][m] = {
            "label": label, "params": rows[TASKS[0]][m]["params"],
            "bytes": round(statistics.mean(rows[t][m]["bytes"] for t in TASKS)),
            "acc": mean_std(per_seed_avg),
            "time": statistics.mean(rows[t][m]["time"] for t in TASKS),
            "ulpt": statistics.mean(rows[t][m]["ulpt"] for t in TASKS),
            "lr": None, "majority": statistics.mean(rows[t][m]["majority"] for t in TASKS),
        }
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump({"rows": rows, "chosen_lr": {"%s/%s" % k: v for k, v in chosen.items()},
                   "seconds": elapsed}, f, indent=1, sort_keys=True)
    plot(rows)
    n_runs = len(TASKS) * len(trained) * (len(LRS) + len(SEEDS) - 1)
    write_report(rows, elapsed, n_runs)
    print("results: wrote %s, %s and %s in %.0f s" % (os.path.relpath(REPORT, ROOT),
          os.path.relpath(PLOT, ROOT), os.path.relpath(RUNS, ROOT), elapsed))


def plot(rows):
    """Accuracy against trainable parameters: a line per series through vanilla and the
    ULPT ranks, the ablation without scale and shift as separate points."""
    data = os.path.join(OUT, "plot.dat")
    series = ["average"] + TASKS
    with open(data, "w") as f:
        for ablation in (False, True):
            for t in series:
                f.write("# %s%s\n" % (t, " (no scale/shift)" if ablation else ""))
                pts = [(rows[t][m], label) for m, label, _ in METHODS[1:]
                       if (m == "ulpt2-noss") == ablation]
                for r, label in sorted(pts, key=lambda p: p[0]["params"]):
                    f.write('%d %.4f %.4f "%s"\n' % (r["params"], 100 * r["acc"][0],
                                                     100 * r["acc"][1], label))
                f.write("\n\n")
    none = 100 * rows["average"]["none"]["acc"][0]
    maj = 100 * rows["average"]["none"]["majority"]
    style = [('lw 2 pt 7 lc rgb "#7b2cbf"', "average of 3 tasks"),
             ('pt 5 lc rgb "#1f77b4"', "names"), ('pt 9 lc rgb "#e69f00"', "spam"),
             ('pt 11 lc rgb "#2ca02c"', "sotu")]
    n = len(series)
    plots = []
    for i, (st, title) in enumerate(style):
        plots.append("'%s' index %d using 1:2:3 with yerrorlines %s title \"%s\""
                     % (data, i, st, title))
        plots.append("'' index %d using 1:2:3 with yerrorbars %s notitle" % (n + i, st))
    plots.append("'' index 0 using 1:2:4 with labels offset 0,1.2 font \"sans,9\" notitle")
    plots.append("'' index %d using 1:2:4 with labels offset 0,1.2 font \"sans,9\" notitle" % n)
    plots.append('%.3f with lines dt 2 lc rgb "black" title "no prompt (average)"' % none)
    plots.append('%.3f with lines dt 3 lc rgb "gray40" title "majority class (average)"' % maj)
    script = """
set terminal pngcairo size 1100,700 font "sans,11"
set output '%s'
set logscale x 2
set xrange [16:4096]
set xlabel "trainable parameters (log scale)"
set ylabel "test accuracy, %% (mean ± std over 3 seeds)"
set title "tinylm (0.85 M parameters, d = 128), 16 soft tokens: accuracy against trainable parameters"
set key outside right
set grid
plot %s
""" % (PLOT, ", \\\n     ".join(plots))
    p = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if p.returncode != 0:
        raise SystemExit("results: gnuplot failed: %s" % p.stderr.strip())


def write_report(rows, elapsed, n_runs):
    """docs/RESULTS.md: results_template.md with the tables, figures and prose filled in."""
    with open(os.path.join(HERE, "results_template.md")) as f:
        template = f.read()
    with open(os.path.join(HERE, "results_prose.md")) as f:
        prose = f.read().strip()
    tables = []
    for t in ["average"] + TASKS:
        lines = ["| method | trainable parameters | file bytes | test accuracy, % | "
                 "training time, s | learning rate |",
                 "|---|---:|---:|---:|---:|---:|"]
        for m, label, _ in METHODS:
            r = rows[t][m]
            lr = "—" if r["lr"] is None else "%g" % r["lr"]
            if t == "average" and m != "none":
                lr = "per task"
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                label, "{:,}".format(r["params"]), "{:,}".format(r["bytes"]) if r["bytes"] else "—",
                fmt_acc(r["acc"]), "%.1f" % r["time"] if m != "none" else "—", lr))
        lines.append("| majority class | — | — | %.1f | — | — |" % (100 * rows[t]["none"]["majority"]))
        title = "Average over the three tasks" if t == "average" else "Task `%s`" % t
        tables.append("### %s\n\n%s\n" % (title, "\n".join(lines)))
    share = []
    for m, label, _ in METHODS[1:]:
        r = rows["average"][m]
        share.append("| %s | %.1f | %.3f | %.3f%% |" % (label, r["time"], r["ulpt"],
                                                    100 * r["ulpt"] / r["time"]))
    figures = {
        "TABLES": "\n".join(tables),
        "SHARE": "\n".join(["| method | 300 steps, s | outside the host's callback, s | share |",
                            "|---|---:|---:|---:|"] + share),
        "MINUTES": "%.0f" % (elapsed / 60),
        "LRS": ", ".join("%g" % x for x in LRS),
        "RUNS": str(n_runs),
        "PROSE": prose,
    }
    for k, v in figures.items():
        template = template.replace("{{%s}}" % k, v)
    with open(REPORT, "w") as f:
        f.write(template)


if __name__ == "__main__":
    main()
