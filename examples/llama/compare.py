"""First-order prompt tuning inside llama.cpp against the other ways to get a prompt for
tinylm-llama, on names, spam and lang with several seeds (docs/RESULTS.md, "Inside
llama.cpp"; `make llama-results`).

    /usr/bin/python3 examples/llama/compare.py --host ULPT-LLAMA --gguf F32.gguf \
        [--quantized Q8_0=Q8.gguf,Q4_K_M=Q4KM.gguf] [options] TASKROOT

Kinds of run, every one with the same prompt shape (16 rows, rank 2), steps, examples a
step, learning rate and seed (the seed fixes the projection, the initial prompt and the
order of the training examples in both engines):

- llama-fo: `ulpt-llama tune`, first-order (llama_embd_grad), on the float32 GGUF;
- torch-ulpt: examples/llama/torch_tune.py, the same model in PyTorch;
- llama-zo: `ulpt-llama tune --method forward-only` on the float32 GGUF, for the steps
  that take as long as --steps first-order ones (the ratio of the two methods' step times:
  the CPU time of two short runs of each on the task, alternately, the least of each);
- torch-vanilla: torch_tune.py --method vanilla (the 16 x 256 rows trainable);
- torch-none: the frozen model without a prompt (once a task);
- llama-fo-TYPE: llama-fo on each quantized file.

Every run is a child process; its peak resident memory comes from wait4.  Runs are
appended to --jsonl as they finish, and a run already there (same kind, task, seed,
steps, examples, learning rate) is not run again, so an interrupted comparison resumes.
--results rewrites the part of a Markdown file between the markers
<!-- llama-results: begin --> and <!-- llama-results: end --> with the tables.
Errors: one line on stderr, exit status 1.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_TUNE = os.path.join(HERE, "torch_tune.py")
BEGIN, END = "<!-- llama-results: begin -->", "<!-- llama-results: end -->"
CALIBRATION_STEPS = 10
CALIBRATION_REPS = 2


class CompareError(Exception):
    pass


def peak_rss_kib(argv):
    """Run one child: (its last JSON line, wall seconds, peak RSS in KiB from wait4)."""
    t0 = time.time()
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err_file)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err_file.seek(0)
        err = err_file.read()
    seconds = time.time() - t0
    if proc.returncode != 0:
        msg = err.decode("utf-8", "replace").strip().splitlines()
        raise CompareError("%s failed (status %d): %s" % (
            " ".join(os.path.basename(a) for a in argv[:2]), proc.returncode,
            msg[-1] if msg else "no message"))
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise CompareError("%s printed no JSON line" % " ".join(argv[:2]))
    return result, seconds, usage.ru_maxrss


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("taskroot", help="the directory holding names/, spam/ and lang/")
    ap.add_argument("--host", required=True, help="examples/llama/ulpt-llama")
    ap.add_argument("--gguf", required=True, help="tinylm-llama as a float32 GGUF")
    ap.add_argument("--quantized", default="",
                    help="TYPE=PATH,... quantized copies of the same model")
    ap.add_argument("--tlm", help="the model for torch_tune.py (default: its own)")
    ap.add_argument("--tasks", default="names,spam,lang")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.1, help="every method's peak rate")
    ap.add_argument("--threads", type=int, default=1,
                    help="every engine's threads (1: on a shared machine two threads that "
                         "wait for each other at every graph node lose most of their time)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--jsonl", required=True, help="append the runs there (resumable)")
    ap.add_argument("--results", help="a Markdown file whose llama-results part is rewritten")
    ap.add_argument("--tables-only", action="store_true",
                    help="run nothing: write the tables of the runs --jsonl holds")
    a = ap.parse_args(argv)
    a.tasks = [t for t in a.tasks.split(",") if t]
    try:
        a.seeds = [int(s) for s in a.seeds.split(",") if s]
        a.quantized = [tuple(q.split("=", 1)) for q in a.quantized.split(",") if q]
    except ValueError:
        ap.error("--seeds: integers separated by commas")
    if any(len(q) != 2 for q in a.quantized):
        ap.error("--quantized: TYPE=PATH,...")
    return a


class Runs:
    """The JSONL file of runs: what is there, and appending a finished one."""

    def __init__(self, path):
        self.path = path
        self.rows = []
        if os.path.exists(path):
            with open(path) as f:
                for no, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            self.rows.append(json.loads(line))
                        except ValueError:
                            raise CompareError("%s:%d: not a JSON line" % (path, no))

    def find(self, **key):
        for r in self.rows:
            if all(r.get(k) == v for k, v in key.items()):
                return r
        return None

    def add(self, row):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        self.rows.append(row)


def run_all(a, runs):
    base = dict(steps=a.steps, examples=a.examples, lr=a.lr, threads=a.threads)

    def once(kind, task, seed, argv, model_path, **extra):
        key = dict(base, kind=kind, task=task, seed=seed, **extra)
        row = runs.find(**key)
        if row:
            return row
        out, seconds, rss = peak_rss_kib(argv)
        row = dict(key, acc_test=out["acc_test"], train_seconds=out["train_seconds"],
                   wall_seconds=round(seconds, 3), max_rss_kib=rss,
                   model_bytes=os.path.getsize(model_path), result=out)
        runs.add(row)
        print("%-16s %-6s seed %d: %5.1f%%, %6.1f s training, %5.1f MiB"
              % (kind, task, seed, 100 * row["acc_test"], row["train_seconds"],
                 rss / 1024), flush=True)
        return row

    tlm = ["--model", a.tlm] if a.tlm else []
    tlm_path = a.tlm or os.path.join(HERE, "..", "tinylm", "tinylm-llama.tlm")

    def llama(gguf, seed, steps, *more):
        return [a.host, "tune", "--gguf", gguf, "--threads", str(a.threads), "--steps",
                str(steps), "--examples", str(a.examples), "--lr", str(a.lr), "--seed",
                str(seed), "--json", *more]

    def torch(taskdir, seed, method):
        return [a.python, TORCH_TUNE, taskdir, *tlm, "--method", method, "--steps",
                str(a.steps), "--batch", str(a.examples), "--lr", str(a.lr), "--seed",
                str(seed), "--threads", str(a.threads), "--skip-baseline", "--json"]

    # the cells of the first table first, seed by seed, then the quantized files: what
    # an interrupted comparison has is whole rows
    zo_steps = {}
    for task in a.tasks:
        taskdir = os.path.join(a.taskroot, task)
        once("torch-none", task, 0, torch(taskdir, 1, "none"), tlm_path)
        # forward-only's step time against first-order's on this task: short runs of
        # each, alternately, by the CPU time of their steps (on a shared machine the wall
        # time of a short run measures the other users as much as the method)
        cal = {"fo": [], "zo": []}
        for rep in range(CALIBRATION_REPS):
            for m, more in (("fo", []), ("zo", ["--method", "forward-only"])):
                r = once("llama-%s-calibration" % m, task, 1,
                         llama(a.gguf, 1, CALIBRATION_STEPS, *more, taskdir), a.gguf,
                         calibration_steps=CALIBRATION_STEPS, rep=rep)
                cal[m].append(r["result"]["train_cpu_seconds"])
        zo_steps[task] = max(1, round(a.steps * min(cal["fo"]) / min(cal["zo"])))
    for seed in a.seeds:
        for task in a.tasks:
            taskdir = os.path.join(a.taskroot, task)
            once("llama-fo", task, seed, llama(a.gguf, seed, a.steps, taskdir), a.gguf)
            once("torch-ulpt", task, seed, torch(taskdir, seed, "ulpt"), tlm_path)
            once("llama-zo", task, seed,
                 llama(a.gguf, seed, zo_steps[task], "--method", "forward-only", taskdir),
                 a.gguf, zo_steps=zo_steps[task])
            once("torch-vanilla", task, seed, torch(taskdir, seed, "vanilla"), tlm_path)
    for seed in a.seeds:
        for task in a.tasks:
            taskdir = os.path.join(a.taskroot, task)
            for qtype, path in a.quantized:
                once("llama-fo-" + qtype, task, seed, llama(path, seed, a.steps, taskdir),
                     path)


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def tables(a, runs):
    """The Markdown of the comparison, from the runs of these sizes."""
    base = dict(steps=a.steps, examples=a.examples, lr=a.lr, threads=a.threads)
    kinds = [("no prompt (frozen model)", "torch-none"),
             ("ULPT, first-order inside llama.cpp (float32)", "llama-fo"),
             ("ULPT, PyTorch host", "torch-ulpt"),
             ("ULPT, forward-only inside llama.cpp, the time of first-order", "llama-zo"),
             ("vanilla prompt tuning, PyTorch host", "torch-vanilla")]
    kinds += [("ULPT, first-order inside llama.cpp (%s)" % q, "llama-fo-" + q)
              for q, _ in a.quantized]

    def rows_of(kind, task):
        rs = [r for r in runs.rows if r["kind"] == kind and r["task"] == task
              and all(r.get(k) == v for k, v in base.items())]
        return sorted(rs, key=lambda r: r["seed"])

    out = ["Test accuracy (%%), seeds %s (%s), %d steps of %d examples, learning rate %g, "
           "%d thread%s:" % (" / ".join(str(s) for s in a.seeds), "one value for no prompt",
                             a.steps, a.examples, a.lr, a.threads,
                             "" if a.threads == 1 else "s"), "",
           "| method | %s | mean of the tasks | training s (mean) |"
           % " | ".join("`%s`" % t for t in a.tasks),
           "|---|%s---:|---:|" % ("---|" * len(a.tasks))]
    means = {}
    for title, kind in kinds:
        cells, task_means, secs = [], [], []
        for task in a.tasks:
            rs = rows_of(kind, task)
            if not rs:
                cells.append("—")
                continue
            accs = [100 * r["acc_test"] for r in rs]
            secs += [r["train_seconds"] for r in rs]
            task_means.append(mean(accs))
            cells.append(" / ".join("%.1f" % x for x in accs)
                         + (" (%.1f)" % mean(accs) if len(accs) > 1 else ""))
        complete = len(task_means) == len(a.tasks)
        means[kind] = mean(task_means) if complete else None
        out.append("| %s | %s | %s | %s |" % (
            title, " | ".join(cells), "%.1f" % means[kind] if complete else "—",
            "%.1f" % mean(secs) if secs and kind != "torch-none" else "—"))
    fo, pt = means.get("llama-fo"), means.get("torch-ulpt")
    if fo is not None and pt is not None:
        out += ["", "First-order inside llama.cpp against the PyTorch host: %+.2f points on "
                "average (target: within 1)." % (fo - pt)]
    zo = [r for r in runs.rows if r["kind"] == "llama-zo"
          and all(r.get(k) == v for k, v in base.items())]
    if zo:
        by_task = {r["task"]: r["zo_steps"] for r in zo}
        out += ["", "Forward-only ran %s (as many steps as take the time of %d first-order "
                "ones, by the ratio of the two methods' CPU time over %d steps: two short "
                "runs of each on each task, alternately, the least of each)."
                % (", ".join("%d steps on `%s`" % (by_task[t], t) for t in a.tasks
                             if t in by_task), a.steps, CALIBRATION_STEPS)]
    out += ["", "Memory of the llama.cpp runs (first-order, every task and seed): the GGUF "
            "file, and the peak resident memory of the whole `ulpt-llama tune` process "
            "(the model loaded twice, once for decoding and once without repacked weights "
            "for the gradient, their contexts, the data):", "",
            "| model | file bytes | peak RSS, MiB (max over runs) | test accuracy, mean % |",
            "|---|---:|---:|---:|"]
    for title, kind in [("float32", "llama-fo")] + [(q, "llama-fo-" + q)
                                                     for q, _ in a.quantized]:
        rs = [r for r in runs.rows if r["kind"] == kind
              and all(r.get(k) == v for k, v in base.items())]
        if rs:
            out.append("| %s | %s | %.1f | %s |" % (
                title, "{:,}".format(rs[0]["model_bytes"]),
                max(r["max_rss_kib"] for r in rs) / 1024,
                "%.1f" % means[kind] if means.get(kind) is not None else "—"))
    pt_rss = [r["max_rss_kib"] for r in runs.rows if r["kind"] == "torch-ulpt"]
    if pt_rss:
        out += ["", "The PyTorch host's peak RSS for the same runs: %.0f MiB (Python, "
                "PyTorch and the float32 model)." % (max(pt_rss) / 1024)]
    return "\n".join(out) + "\n"


def write_results(path, text):
    with open(path) as f:
        doc = f.read()
    i, j = doc.find(BEGIN), doc.find(END)
    if i < 0 or j < i:
        raise CompareError("%s: no %s ... %s markers" % (path, BEGIN, END))
    new = doc[:i + len(BEGIN)] + "\n" + text + doc[j:]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def main(argv=None):
    a = parse(argv)
    try:
        runs = Runs(a.jsonl)
        t0 = time.time()
        if not a.tables_only:
            run_all(a, runs)
            print("compare: %.0f s of wall time" % (time.time() - t0))
        text = tables(a, runs)
        print(text)
        if a.results:
            write_results(a.results, text)
    except (CompareError, OSError) as e:
        print("compare: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
