"""Tune a ULPT prompt for the frozen tinylm-llama in PyTorch: the reference host against
which llama.cpp's first-order tuning of the same model is measured (docs/TINYLM.md, "The
Llama-shaped model").

    /usr/bin/python3 examples/llama/torch_tune.py [options] TASKDIR

The prompt is `ulpt.torch.ULPTPrompt` (libulpt's forward and backward of E = (Z.P) * s + b),
the model examples/tinylm/llama_torch.py, and the step libulpt's own AdamW
(`ulpt.Optimizer`), so that everything but the model's engine is what examples/tinylm/tune
does, option for option: an example is [E ; tok_emb[text bytes] ; tok_emb['\\n']], its label
the byte predicted next, restricted to the two verbalizer bytes (the labels' first
letters); AdamW at --lr after 10% warmup then linear decay, weight decay 1e-5, clipping at
1.0; the prompt's projection and initial Z seeded with --seed, and the training examples
drawn in tune's order (SplitMix64 Fisher-Yates shuffles from --seed, a fresh one every
epoch), so a given seed sees the same batches in every host.  A step's batch runs as one
padded forward and backward (causal attention: padding after an example's last byte does
not reach it).  Errors: one line on stderr, exit status 1 (2 for usage).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "examples", "tinylm"))
import llama_torch as lt  # noqa: E402

try:
    import ulpt  # noqa: E402
except ModuleNotFoundError:
    sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
    import ulpt  # noqa: E402
import ulpt.torch  # noqa: E402

SEPARATOR = ord("\n")
MASK64 = (1 << 64) - 1


class TaskError(Exception):
    pass


def load_split(taskdir, name, max_text):
    """(examples as (bytes, label), label names) of TASKDIR/NAME.tsv, with tune's checks."""
    path = os.path.join(taskdir, name + ".tsv")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TaskError("%s: %s" % (path, e.strerror))
    if data and not data.endswith(b"\n"):
        raise TaskError("%s:%d: the last line has no newline" % (path, data.count(b"\n") + 1))
    lines = data.split(b"\n")[:-1]
    head = lines[0].split(b"\t") if lines else []
    if (len(head) != 3 or head[0] != b"#" or not head[1] or not head[2]
            or head[1][0] == head[2][0] or max(len(head[1]), len(head[2])) >= 64):
        raise TaskError('%s:1: expected "#<TAB>label0<TAB>label1" with different first '
                        "letters" % path)
    out = []
    for no, line in enumerate(lines[1:], start=2):
        if len(line) < 3 or line[:1] not in (b"0", b"1") or line[1:2] != b"\t" \
                or len(line) - 2 > max_text:
            raise TaskError('%s:%d: expected "0|1<TAB>text" with 1..%d bytes of text'
                            % (path, no, max_text))
        out.append((line[2:], line[0] - ord("0")))
    if not out:
        raise TaskError("%s: no examples" % path)
    return out, (head[1], head[2])


def splitmix(state):
    """(next state, number) of SplitMix64, as examples/tinylm/task.c draws them."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def shuffle(order, state):
    """Fisher-Yates in place, as task_shuffle; returns the new state."""
    for i in range(len(order), 1, -1):
        state, r = splitmix(state)
        j = r % i
        order[i - 1], order[j] = order[j], order[i - 1]
    return state


def batch_rows(model, examples, e):
    """Padded input rows (B x N x C) of [e ; text ; '\\n'] and each example's last row."""
    n = 0 if e is None else e.shape[0]
    lengths = [n + len(text) + 1 for text, _ in examples]
    N = max(lengths)
    ids = torch.full((len(examples), N - n), SEPARATOR, dtype=torch.long)
    for i, (text, _) in enumerate(examples):
        ids[i, :len(text)] = torch.tensor(list(text), dtype=torch.long)
    rows = model.tok_emb[ids]
    if e is not None:
        rows = torch.cat([e.unsqueeze(0).expand(len(examples), -1, -1), rows], dim=1)
    return rows, torch.tensor(lengths) - 1


def class_logits(model, examples, e, verbalizer):
    """The two verbalizer logits at each example's last position (B x 2)."""
    rows, last = batch_rows(model, examples, e)
    logits = model(rows)
    return logits[torch.arange(len(examples)), last][:, verbalizer]


def accuracy(model, examples, e, verbalizer, chunk=64):
    right = 0
    with torch.no_grad():
        for i in range(0, len(examples), chunk):
            part = examples[i:i + chunk]
            pred = class_logits(model, part, e, verbalizer).argmax(-1)
            right += int((pred == torch.tensor([y for _, y in part])).sum())
    return right / len(examples)


def majority(examples):
    ones = sum(y for _, y in examples)
    return max(ones, len(examples) - ones) / len(examples)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("taskdir", help="train.tsv and test.tsv, as examples/tinylm/tasks.py "
                                    "writes them")
    ap.add_argument("--model", default=os.path.join(ROOT, "examples", "tinylm",
                                                    "tinylm-llama.tlm"),
                    help="frozen model (version-2 .tlm; default: the shipped tinylm-llama)")
    ap.add_argument("--method", choices=["ulpt", "vanilla", "none"], default="ulpt",
                    help="ulpt (default), vanilla (n x d trainable) or none (no prompt)")
    ap.add_argument("--tokens", type=int, default=16, help="soft tokens (16)")
    ap.add_argument("--rank", type=int, default=2, help="ULPT rank (2)")
    ap.add_argument("--steps", type=int, default=200, help="training steps (200)")
    ap.add_argument("--batch", type=int, default=16, help="examples a step (16)")
    ap.add_argument("--lr", type=float, default=0.03, help="AdamW peak learning rate (0.03)")
    ap.add_argument("--seed", type=int, default=1,
                    help="seeds the prompt's initialization, projection and data order (1)")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (2)")
    ap.add_argument("--save", help="write the tuned prompt there (f32 prompt file)")
    ap.add_argument("--json", action="store_true", help="one JSON line of results")
    ap.add_argument("--skip-baseline", action="store_true",
                    help="do not measure the no-prompt accuracy (reported as -1)")
    a = ap.parse_args(argv)
    for name in ("tokens", "rank", "steps", "batch", "threads"):
        if getattr(a, name) < 1:
            ap.error("--%s must be at least 1" % name)
    if not (a.lr > 0 and math.isfinite(a.lr)):
        ap.error("--lr must be a positive number")
    if a.seed < 0:
        ap.error("--seed must be at least 0")
    return a


def run(a):
    torch.set_num_threads(a.threads)
    try:
        model, meta = lt.load_llama(a.model)
    except (ValueError, OSError) as e:
        raise TaskError(str(e))
    model.requires_grad_(False)
    cfg = model.cfg
    none = a.method == "none"
    n_tokens = 0 if none else a.tokens
    if n_tokens + 2 > cfg.T:
        raise TaskError("--tokens %d leaves no room for text in a context of %d"
                        % (n_tokens, cfg.T))
    max_text = cfg.T - n_tokens - 1
    task = os.path.basename(os.path.normpath(a.taskdir))
    test, names = load_split(a.taskdir, "test", max_text)
    train = [] if none else load_split(a.taskdir, "train", max_text)[0]
    verbalizer = [names[0][0], names[1][0]]  # the labels' first bytes
    model_name = "tinylm-llama" if meta["corpus"] else "tinylm-llama-random"

    acc_before = -1.0
    if not a.skip_baseline or none:
        acc_before = accuracy(model, test, None, verbalizer)
    if not a.json:
        print('task %s: %d training, %d test examples; labels "%s" and "%s"'
              % (task, len(train), len(test), names[0].decode("utf-8", "replace"),
                 names[1].decode("utf-8", "replace")))
        print("majority class: %.1f%% of the test set" % (100 * majority(test)))
        if acc_before >= 0:
            print("frozen %s (%d parameters), no prompt: test accuracy %.1f%%"
                  % (model_name, cfg.param_count(), 100 * acc_before))

    soft = opt = None
    first = last = 0.0
    train_seconds = 0.0
    if not none:
        if a.method == "vanilla":  # E = Z, n x d trainable, at the embeddings' scale
            std = float(model.tok_emb.detach().double().pow(2).mean().sqrt())
            soft = ulpt.torch.ULPTPrompt(
                n_tokens=a.tokens, dim=cfg.C, rank=cfg.C, projection_seed=a.seed,
                init_seed=a.seed, projection_kind=ulpt.ProjectionKind.IDENTITY,
                flags=ulpt.Flags.NO_SCALE | ulpt.Flags.NO_SHIFT, init_std=std)
        else:
            soft = ulpt.torch.ULPTPrompt(n_tokens=a.tokens, dim=cfg.C, rank=a.rank,
                                         projection_seed=a.seed, init_seed=a.seed)
        opt = ulpt.Optimizer(soft.prompt, kind=ulpt.OptimizerKind.ADAMW, lr=a.lr,
                             weight_decay=1e-5, max_grad_norm=1.0,
                             schedule=ulpt.Schedule.LINEAR, warmup_steps=a.steps // 10,
                             total_steps=a.steps)
        if not a.json:
            print("tuning a %s prompt: %d soft tokens, %d trainable parameters "
                  "(vanilla prompt tuning: %d)" % ("vanilla" if a.method == "vanilla"
                                                   else "ULPT", a.tokens,
                                                   soft.prompt.num_params, a.tokens * cfg.C))
        order = list(range(len(train)))
        state, nxt = a.seed, len(train)
        target = torch.zeros(a.batch, dtype=torch.long)
        start = time.time()
        for step in range(1, a.steps + 1):
            batch = []
            for _ in range(a.batch):  # epochs of a fresh permutation, as tune
                if nxt == len(train):
                    state = shuffle(order, state)
                    nxt = 0
                batch.append(train[order[nxt]])
                nxt += 1
            for i, (_, y) in enumerate(batch):
                target[i] = y
            opt.zero_grad()
            z = class_logits(model, batch, soft(), verbalizer)
            loss = torch.nn.functional.cross_entropy(z, target)  # the batch's mean
            loss.backward()  # dL/dE into libulpt's backward, then into Z, s, b
            opt.step()
            last = loss.item()
            if step == 1:
                first = last
            if not a.json and (step % 50 == 0 or step == a.steps):
                print("step %4d/%d  loss %.4f  %6.1fs" % (step, a.steps, last,
                                                        time.time() - start), flush=True)
        train_seconds = time.time() - start
        soft.prompt.set_meta("model", model_name)
        soft.prompt.set_meta("task", task)

    e = None if soft is None else soft().detach()
    acc_after = accuracy(model, test, e, verbalizer)
    file_bytes = 0
    if a.save and soft is not None:
        soft.prompt.save(a.save)
        file_bytes = os.path.getsize(a.save)
    result = dict(task=task, method=a.method, engine="pytorch", model=model_name,
                  tokens=n_tokens, rank=0 if none else soft.prompt.rank, seed=a.seed,
                  lr=a.lr, steps=0 if none else a.steps, batch=a.batch,
                  params=0 if none else soft.prompt.num_params, file_bytes=file_bytes,
                  majority=majority(test), acc_no_prompt=acc_before, acc_test=acc_after,
                  loss_first=first, loss_last=last, train_seconds=train_seconds,
                  threads=a.threads)
    if a.json:
        print(json.dumps(result))
    else:
        if soft is not None:
            print("tuned in %.1f s; loss %.4f -> %.4f" % (train_seconds, first, last))
        print("%s: test accuracy %.1f%%  (%smajority %.1f%%)"
              % ("no prompt" if none else "tuned prompt", 100 * acc_after,
                 "" if acc_before < 0 else "no prompt %.1f%%, " % (100 * acc_before),
                 100 * majority(test)))
        if a.save and soft is not None:
            print("saved %s: %d bytes" % (a.save, file_bytes))
    return result


def main(argv=None):
    a = parse(argv)
    try:
        run(a)
    except (TaskError, ulpt.Error) as e:
        print("torch_tune: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
