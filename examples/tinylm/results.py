#!/usr/bin/env python3
"""`make results`: ULPT against vanilla prompt tuning on three tasks tinylm can learn.

For every task and method it runs examples/tinylm/tune, and writes docs/RESULTS.md, the
plots docs/results/accuracy_vs_params.png and docs/results/loss_curves.png, and every
run's JSON line in docs/results/runs.jsonl.  The protocol (the same for every method):

  * 16 soft tokens, batch 16, AdamW, 10% warmup then linear decay, weight decay 1e-5,
    gradient clipping at norm 1; STEPS[task] steps for every method of a task;
  * learning-rate search: the log grid LRS (1e-3 to 1) with seed 1, the best by validation
    accuracy (ties: the smaller learning rate); then seeds 2 and 3 at that rate; the test
    accuracy is reported as the mean and standard deviation over the three seeds;
  * methods: no prompt; vanilla (identity projection, n x d trainable); ULPT rank 2, 8
    and 32; rank 2 without scale and shift; rank 2 trained forward-only (two-point
    zeroth-order estimates, one direction a step); rank 2 started from a text's embeddings;
  * sweeps at ULPT r=2's chosen rate, three seeds, on the two short-text tasks: projection
    groups and the scale of Z's random start;
  * a wider host: no prompt, vanilla, ULPT rank 2 and 32 and rank 2 without scale and
    shift again, the same protocol, on tinylm-wide.tlm (d = 256 instead of 128); their
    method names end in "@wide".

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
CURVES = os.path.join(OUT, "loss_curves.png")
REPORT = os.path.join(ROOT, "docs", "RESULTS.md")

TASKS = ["names", "spam", "lang"]
# spam's texts are 64 bytes against names' and lang's ten or so, so its steps cost four
# times as much; its budget is smaller in steps but still more epochs than it needs
STEPS = {"names": 1000, "spam": 600, "lang": 1000}
TOKENS, BATCH, CURVE_EVERY = 16, 16, 25
LRS = [0.001, 0.01, 0.1, 1.0]
SEEDS = [1, 2, 3]
SWEEP_TASKS = ["names", "lang"]
# what the text-initialised prompt starts from: "<label 0> or <label 1>? " (its bytes'
# embeddings, repeated to fill the 16 soft tokens)
INIT_TEXT = {"names": "female or male? ", "spam": "ham or spam? ", "lang": "english or french? "}
# name, label, tune arguments
METHODS = [
    ("none", "no prompt", ["--method", "none"]),
    ("vanilla", "vanilla prompt tuning", ["--method", "vanilla"]),
    ("ulpt2", "ULPT r=2", ["--rank", "2"]),
    ("ulpt8", "ULPT r=8", ["--rank", "8"]),
    ("ulpt32", "ULPT r=32", ["--rank", "32"]),
    ("ulpt2-noss", "ULPT r=2, no scale/shift", ["--rank", "2", "--no-scale-shift"]),
    ("ulpt2-zo", "ULPT r=2, forward-only", ["--rank", "2", "--zo"]),
    ("ulpt2-text", "ULPT r=2, text init", ["--rank", "2", "--init-text", None]),
]
# the sweeps: ULPT r=2 with one thing changed, at r=2's chosen learning rate
SWEEPS = [
    ("ulpt2-g4", "ULPT r=2, 4 groups", ["--rank", "2", "--groups", "4"]),
    ("ulpt2-g16", "ULPT r=2, 16 groups", ["--rank", "2", "--groups", "16"]),
    ("ulpt2-std0.1", "ULPT r=2, Z from N(0, 0.1^2)", ["--rank", "2", "--init-std", "0.1"]),
]
# the same methods on the wider host (method name + "@wide")
WIDE = ["none", "vanilla", "ulpt2", "ulpt32", "ulpt2-noss"]
WIDE_TRAINED = [m + "@wide" for m in WIDE if m != "none"]
MODELS = {"": "tinylm.tlm", "wide": "tinylm-wide.tlm"}
ALL = METHODS + SWEEPS


def base_of(method):
    """The method of a run and the weights file of its host: "ulpt2@wide" is ULPT r=2 on
    tinylm-wide.tlm."""
    name, _, host = method.partition("@")
    return name, os.path.join(HERE, MODELS[host])


def key(task, method, lr, seed):
    return "%s/%s/lr=%g/seed=%d" % (task, method, lr, seed)


def load_runs():
    runs = {}
    if os.path.exists(RUNS):
        with open(RUNS) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    if base_of(r["method"])[0] != "none" and (r["steps"], r["tokens"], r["batch"]) != \
                            (STEPS[r["task"]], TOKENS, BATCH):
                        raise SystemExit("results: %s in %s was run with other settings; "
                                         "start over with --fresh" % (r["key"], RUNS))
                    runs[r["key"]] = r
    return runs


def run_one(task, method, lr, seed):
    name, model = base_of(method)
    args = [INIT_TEXT[task] if a is None else a for a in dict((m[0], m[2]) for m in ALL)[name]]
    prompt = os.path.join(OUT, "tmp-%s-%s-%g-%d.ulpt" % (task, method, lr, seed))
    cmd = [TUNE, os.path.join(TASKS_DIR, task), "--model", model,
           "--tokens", str(TOKENS), "--steps", str(STEPS[task]), "--batch", str(BATCH),
           "--lr", repr(lr), "--seed", str(seed), "--threads", "1", "--valid", "--json",
           "--skip-baseline"] + args
    if name != "none":
        cmd += ["--curve", str(CURVE_EVERY), "--save", prompt]
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


def figures(label, rs, lr):
    """The row of one method on one task from its runs (one per seed)."""
    return {"label": label, "params": rs[0]["params"], "bytes": rs[0]["file_bytes"],
            "acc": mean_std([r["acc_test"] for r in rs]),
            "time": statistics.mean(r["train_seconds"] for r in rs),
            "ulpt": statistics.mean(r["ulpt_seconds"] for r in rs),
            "lr": lr, "majority": rs[0]["majority"], "steps": rs[0]["steps"],
            "loss_last": statistics.mean(r["loss_last"] for r in rs),
            "curve": [statistics.mean(c) for c in zip(*[r["curve"] for r in rs])]
            if "curve" in rs[0] else None}


def run_protocol(runner):
    """Every run of the protocol not yet in runs.jsonl; the chosen learning rates."""
    trained = [m[0] for m in METHODS if m[0] != "none"]
    # no prompt: nothing to tune or seed, one evaluation per task
    runner.batch([(t, "none", LRS[0], 1) for t in TASKS])
    # learning-rate search (seed 1), then the other seeds at the chosen rate
    runner.batch([(t, m, lr, SEEDS[0]) for t in TASKS for m in trained for lr in LRS])
    chosen = {(t, m): choose_lr(runner, t, m) for t in TASKS for m in trained}
    runner.batch([(t, m, chosen[t, m], s) for t in TASKS for m in trained for s in SEEDS[1:]])
    # the sweeps change one thing of ULPT r=2 and keep its rate
    runner.batch([(t, m, chosen[t, "ulpt2"], s) for t in SWEEP_TASKS for m, _, _ in SWEEPS
                  for s in SEEDS])
    # the wider host: its own search and seeds, the same protocol
    runner.batch([(t, "none@wide", LRS[0], 1) for t in TASKS])
    runner.batch([(t, m, lr, SEEDS[0]) for t in TASKS for m in WIDE_TRAINED for lr in LRS])
    chosen.update({(t, m): choose_lr(runner, t, m) for t in TASKS for m in WIDE_TRAINED})
    runner.batch([(t, m, chosen[t, m], s)
                  for t in TASKS for m in WIDE_TRAINED for s in SEEDS[1:]])
    return chosen


def summarise(runner, chosen):
    """rows[task][method] (figures over the three seeds), the sweeps, the search."""
    rows = {t: {} for t in TASKS + ["average"]}
    labels = dict((m, label) for m, label, _ in METHODS)
    for m, label in [(m, l) for m, l, _ in METHODS] + [(m + "@wide", labels[m]) for m in WIDE]:
        # the runs behind each task's figures, one per seed (no prompt: the one evaluation)
        by_task = {t: [runner.get(t, m, LRS[0], 1)] * len(SEEDS) if base_of(m)[0] == "none" else
                      [runner.get(t, m, chosen[t, m], s) for s in SEEDS] for t in TASKS}
        for t, rs in by_task.items():
            rows[t][m] = figures(label, rs, None if base_of(m)[0] == "none" else chosen[t, m])
        per_seed_avg = [statistics.mean(by_task[t][i]["acc_test"] for t in TASKS)
                        for i in range(len(SEEDS))]
        rows["average"][m] = {
            "label": label, "params": rows[TASKS[0]][m]["params"],
            "bytes": round(statistics.mean(rows[t][m]["bytes"] for t in TASKS)),
            "acc": mean_std(per_seed_avg),
            "time": statistics.mean(rows[t][m]["time"] for t in TASKS),
            "ulpt": statistics.mean(rows[t][m]["ulpt"] for t in TASKS),
            "lr": None, "majority": statistics.mean(rows[t][m]["majority"] for t in TASKS),
        }
    sweeps = {t: {m: figures(label, [runner.get(t, m, chosen[t, "ulpt2"], s) for s in SEEDS],
                             chosen[t, "ulpt2"]) for m, label, _ in SWEEPS}
              for t in SWEEP_TASKS}
    # the learning-rate search itself: validation accuracy of every (method, rate), seed 1
    trained = [m[0] for m in METHODS if m[0] != "none"]
    search = {t: {m: [runner.get(t, m, lr, SEEDS[0])["acc_valid"] for lr in LRS]
                  for m in trained + WIDE_TRAINED} for t in TASKS}
    return rows, sweeps, search


def main():
    jobs = 2
    if "--jobs" in sys.argv:
        jobs = int(sys.argv[sys.argv.index("--jobs") + 1])
    os.makedirs(OUT, exist_ok=True)
    if "--fresh" in sys.argv and os.path.exists(RUNS):
        os.remove(RUNS)
    wall = time.time()
    runner = Runner(jobs)
    chosen = run_protocol(runner)
    elapsed = time.time() - wall
    summary = os.path.join(OUT, "summary.json")
    if os.path.exists(summary) and "--fresh" not in sys.argv:
        # the recorded time is that of every sitting that trained runs: add this one's
        with open(summary) as f:
            before = json.load(f)
        elapsed = before["seconds"] + (elapsed if runner.ran else 0)
    n_runs = len(runner.runs)
    rows, sweeps, search = summarise(runner, chosen)
    with open(summary, "w") as f:
        json.dump({"rows": rows, "sweeps": sweeps, "search": search,
                   "chosen_lr": {"%s/%s" % k: v for k, v in chosen.items()},
                   "seconds": elapsed, "runs": n_runs}, f, indent=1, sort_keys=True)
    plot(rows)
    plot_curves(rows)
    write_report(rows, sweeps, search, elapsed, n_runs)
    print("results: wrote %s, its plots and %s in %.0f s" % (
        os.path.relpath(REPORT, ROOT), os.path.relpath(RUNS, ROOT), elapsed))


COLOURS = {"names": "#1f77b4", "spam": "#e69f00", "lang": "#2ca02c", "average": "#7b2cbf"}


def gnuplot(script):
    p = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
    if p.returncode != 0:
        raise SystemExit("results: gnuplot failed: %s" % p.stderr.strip())


def plot(rows):
    """Accuracy against trainable parameters: a line per series through vanilla and the
    ULPT ranks; the r=2 variants (no scale/shift, forward-only, text init) as points."""
    data = os.path.join(OUT, "plot.dat")
    series = ["average"] + TASKS
    line = ["vanilla", "ulpt2", "ulpt8", "ulpt32"]
    variants = ["ulpt2-noss", "ulpt2-zo", "ulpt2-text"]
    # the variants of r=2 share its 288 parameters: drawn to its left (column 5 is where
    # they are drawn, a factor off their x), each series a little apart
    shift = {"ulpt2-noss": 1.0, "ulpt2-zo": 0.72, "ulpt2-text": 0.52}
    with open(data, "w") as f:
        for group in (line, variants):
            for i, t in enumerate(series):
                f.write("# %s\n" % t)
                pts = sorted(((rows[t][m], m) for m in group), key=lambda p: p[0]["params"])
                for r, m in pts:
                    f.write('%d %.4f %.4f "%s" %.4f\n' % (
                        r["params"], 100 * r["acc"][0], 100 * r["acc"][1], r["label"],
                        r["params"] * shift.get(m, 1.0) * (1 + 0.02 * i)))
                f.write("\n\n")
        f.write("# average, wider host\n")
        for r in sorted((rows["average"][m + "@wide"] for m in line if m in WIDE),
                        key=lambda r: r["params"]):
            f.write('%d %.4f %.4f "%s" %d\n' % (r["params"], 100 * r["acc"][0],
                                                100 * r["acc"][1], r["label"], r["params"]))
        f.write("\n\n")
    none = 100 * rows["average"]["none"]["acc"][0]
    maj = 100 * rows["average"]["none"]["majority"]
    n = len(series)
    plots = []
    for i, t in enumerate(series):
        st = 'pt 7 lc rgb "%s"%s' % (COLOURS[t], " lw 2" if t == "average" else "")
        plots.append("'%s' index %d using 1:2:3 with yerrorlines %s title \"%s\""
                     % (data, i, st, "average of 3 tasks" if t == "average" else t))
        plots.append("'' index %d using 5:2:3 with yerrorbars pt 6 lc rgb \"%s\" notitle"
                     % (n + i, COLOURS[t]))
    plots.append("'' index %d using 1:2:3 with yerrorlines dt 2 pt 5 lc rgb \"%s\" "
                 "title \"average of 3 tasks, wider host (d = 256)\"" % (2 * n, COLOURS["average"]))
    plots.append("'' index 0 using 1:2:4 with labels offset 0,1.2 font \"sans,9\" notitle")
    plots.append("'' index %d using 5:2:4 with labels rotate by 90 left offset 0,1.5 "
                 "font \"sans,8\" notitle" % n)
    plots.append('%.3f with lines dt 2 lc rgb "black" title "no prompt (average)"' % none)
    plots.append('%.3f with lines dt 3 lc rgb "gray40" title "majority class (average)"' % maj)
    gnuplot("""
set terminal pngcairo size 1100,700 font "sans,11"
set output '%s'
set logscale x 2
set xrange [16:8192]
set xlabel "trainable parameters (log scale)"
set ylabel "test accuracy, %% (mean ± std over 3 seeds)"
set title "tinylm (d = 128), 16 soft tokens. Filled: vanilla and ULPT r = 2, 8, 32. Open: the r = 2 variants\\n(288 parameters, drawn left of r = 2; 32 without scale and shift).\\nDashed: the average on the wider host (d = 256), ULPT r = 2, r = 32 and vanilla"
set key outside right
set grid
plot %s
""" % (PLOT, ", \\\n     ".join(plots)))


def plot_curves(rows):
    """Training loss (mean of each 25 steps, mean over the seeds) of every method at its
    chosen learning rate, one panel per task."""
    data = os.path.join(OUT, "curves.dat")
    trained = [m for m, _, _ in METHODS if m != "none"]
    panels, index = [], 0
    with open(data, "w") as f:
        for methods, host in ((trained, ""), (WIDE_TRAINED, ", wider host (d = 256)")):
            for t in TASKS:
                plots = []
                for m in methods:
                    f.write("# %s %s\n" % (t, m))
                    for k, v in enumerate(rows[t][m]["curve"]):
                        f.write("%d %.5f\n" % ((k + 1) * CURVE_EVERY, v))
                    f.write("\n\n")
                    plots.append("'%s' index %d using 1:2 with lines lw 2 lc %d title \"%s (lr %g)\""
                                 % (data, index, trained.index(base_of(m)[0]) + 1,
                                    rows[t][m]["label"], rows[t][m]["lr"]))
                    index += 1
                panels.append('set title "%s%s"\nplot %s' % (t, host, ", \\\n     ".join(plots)))
    gnuplot("""
set terminal pngcairo size 1500,1000 font "sans,10"
set output '%s'
set multiplot layout 2,%d title "training loss (mean of every %d steps, mean over 3 seeds) at each method's chosen learning rate"
set xlabel "step"
set ylabel "training loss"
set key top right font "sans,8"
set grid
%s
unset multiplot
""" % (CURVES, len(TASKS), CURVE_EVERY, "\n".join(panels)))


def results_tables(rows):
    """One table a task (and the average): every method's size, accuracy, loss and time."""
    tables = []
    for t in ["average"] + TASKS:
        lines = ["| method | trainable parameters | file bytes | test accuracy, % | "
                 "final training loss | training time, s | learning rate |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for m, label, _ in METHODS:
            r = rows[t][m]
            lr = "—" if r["lr"] is None else "%g" % r["lr"]
            if t == "average" and m != "none":
                lr = "per task"
            loss = "—" if m == "none" or t == "average" else "%.3f" % r["loss_last"]
            lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                label, "{:,}".format(r["params"]), "{:,}".format(r["bytes"]) if r["bytes"] else "—",
                fmt_acc(r["acc"]), loss, "%.1f" % r["time"] if m != "none" else "—", lr))
        lines.append("| majority class | — | — | %.1f | — | — | — |" % (100 * rows[t]["none"]["majority"]))
        title = ("Average over the three tasks" if t == "average" else
                 "Task `%s` (%d steps)" % (t, STEPS[t]))
        tables.append("### %s\n\n%s\n" % (title, "\n".join(lines)))
    return "\n".join(tables)


def search_table(rows, search):
    """The learning-rate search: validation accuracy at every rate, the chosen one bold."""
    lines = ["| task | method | " + " | ".join("lr %g" % lr for lr in LRS) + " |",
             "|---|---|" + "---:|" * len(LRS)]
    for t in TASKS:
        for m, label in [(m, l) for m, l, _ in METHODS[1:]] + \
                [(m + "@wide", rows[t][m]["label"] + ", wider host") for m in WIDE[1:]]:
            accs = search[t][m]
            best = max(accs)
            cells = [("**%.1f**" if a == best and LRS[k] == rows[t][m]["lr"] else "%.1f") % (100 * a)
                     for k, a in enumerate(accs)]
            lines.append("| %s | %s | %s |" % (t, label, " | ".join(cells)))
    return "\n".join(lines)


def sweeps_table(rows, sweeps):
    """The sweeps of ULPT r=2 against ULPT r=2 itself."""
    lines = ["| task | variant | trainable parameters | test accuracy, % | "
             "final training loss | learning rate |", "|---|---|---:|---:|---:|---:|"]
    for t in SWEEP_TASKS:
        base = rows[t]["ulpt2"]
        lines.append("| %s | ULPT r=2 (1 group, Z from N(0, 1)) | %d | %s | %.3f | %g |"
                     % (t, base["params"], fmt_acc(base["acc"]), base["loss_last"], base["lr"]))
        for m, label, _ in SWEEPS:
            r = sweeps[t][m]
            lines.append("| %s | %s | %d | %s | %.3f | %g |" % (
                t, label, r["params"], fmt_acc(r["acc"]), r["loss_last"], r["lr"]))
    return "\n".join(lines)


def hosts_table(rows):
    """The two hosts side by side: each method's accuracy and the gap to vanilla."""
    lines = ["| task | method | trainable parameters, d = 128 / 256 | test accuracy, "
             "d = 128 | test accuracy, d = 256 | final training loss, d = 128 / 256 | "
             "learning rate, d = 128 / 256 |", "|---|---|---:|---:|---:|---:|---:|"]
    for t in ["average"] + TASKS:
        for m in WIDE:
            a, b = rows[t][m], rows[t][m + "@wide"]
            trained_here = m != "none" and t != "average"
            lines.append("| %s | %s | %s / %s | %s | %s | %s | %s |" % (
                t, a["label"], "{:,}".format(a["params"]), "{:,}".format(b["params"]),
                fmt_acc(a["acc"]), fmt_acc(b["acc"]),
                "%.3f / %.3f" % (a["loss_last"], b["loss_last"]) if trained_here else "—",
                "%g / %g" % (a["lr"], b["lr"]) if trained_here else "—"))
        lines.append("| %s | majority class | — | %.1f | %.1f | — | — |" % (
            t, 100 * rows[t]["none"]["majority"], 100 * rows[t]["none@wide"]["majority"]))
        gaps = ["%.1f" % (100 * (rows[t]["vanilla" + h]["acc"][0] - rows[t]["ulpt2" + h]["acc"][0]))
                for h in ("", "@wide")]
        lines.append("| %s | *vanilla − ULPT r=2, points* | — | *%s* | *%s* | — | — |"
                     % (t, gaps[0], gaps[1]))
    return "\n".join(lines)


def share_table(rows):
    """How much of a training run is spent outside the host's callback."""
    lines = ["| method | a training run, s | outside the host's callback, s | share |",
             "|---|---:|---:|---:|"]
    for m, label, _ in METHODS[1:]:
        r = rows["average"][m]
        lines.append("| %s | %.1f | %.3f | %.3f%% |" % (label, r["time"], r["ulpt"],
                                                     100 * r["ulpt"] / r["time"]))
    return "\n".join(lines)


def write_report(rows, sweeps, search, elapsed, n_runs):
    """docs/RESULTS.md: results_template.md with the tables, figures and prose filled in."""
    with open(os.path.join(HERE, "results_template.md")) as f:
        template = f.read()
    with open(os.path.join(HERE, "results_prose.md")) as f:
        prose = f.read().strip()
    figures = {
        "TABLES": results_tables(rows),
        "SEARCH": search_table(rows, search),
        "SWEEPS": sweeps_table(rows, sweeps),
        "WIDE": hosts_table(rows),
        "SHARE": share_table(rows),
        "MINUTES": "%.0f" % (elapsed / 60),
        "LRS": ", ".join("%g" % x for x in LRS),
        "STEPS": ", ".join("%s %d" % (t, STEPS[t]) for t in TASKS),
        "RUNS": str(n_runs),
        "PROSE": prose,
    }
    for k, v in figures.items():
        template = template.replace("{{%s}}" % k, v)
    with open(REPORT, "w") as f:
        f.write(template)


if __name__ == "__main__":
    main()
