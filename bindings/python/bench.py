"""The Python callback path against the by-hand loop (make bench-python).

At n_tokens=100, rank 2, dim 4096 (AdamW) it times one training step two ways with the
same host work:

  by hand    prompt.forward(out=E); host(E, G); prompt.zero_grad(); prompt.backward(G);
             opt.step()
  callback   opt.train_step(host)      # E and G are the library's buffers, no copies

and prints the median time per step of each and the median ratio of alternating rounds, for a host that only hands
back a fixed gradient (the overhead itself) and for one that computes a squared error in
NumPy (a real, if tiny, host).  ROUNDS rounds of STEPS steps each way, in one process.
train_step itself also zero-fills G and checks it is finite (include/ulpt.h), which the
by-hand loop here does only the first of.
"""
import statistics
import sys
import time

import numpy as np

import ulpt

N, R, D = 100, 2, 4096
STEPS, ROUNDS = 50, 15


def hosts(target):
    def fixed(E, G):
        G[...] = target
        return 1.0

    def squared_error(E, G):
        np.subtract(E, target, out=G)
        loss = float(np.vdot(G, G))
        G *= 2
        return loss

    return {"fixed gradient": fixed, "squared error": squared_error}


def timed(fn):
    t0 = time.perf_counter()
    for _ in range(STEPS):
        fn()
    return (time.perf_counter() - t0) / STEPS


def compare(a, b):
    """Median times per step of a and b, and the median of their per-round ratios:
    rounds alternate between the two so that a busy machine slows both alike."""
    ta, tb, ratios = [], [], []
    for _ in range(ROUNDS):
        ta.append(timed(a))
        tb.append(timed(b))
        ratios.append(tb[-1] / ta[-1])
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def main():
    ulpt.set_num_threads(1)
    prompt = ulpt.Prompt(n_tokens=N, rank=R, dim=D, projection_seed=1, init_seed=1,
                         init_std=0.01)
    opt = ulpt.Optimizer(prompt, lr=1e-4)
    rng = np.random.default_rng(0)
    target = rng.standard_normal((N, D)).astype(np.float32) * 0.01
    E = np.empty((N, D), np.float32)
    G = np.empty((N, D), np.float32)
    print("libulpt %s, Python callback at (n_tokens, rank, dim) = (%d, %d, %d), AdamW, "
          "1 BLAS thread; %d alternating rounds of %d steps" % (ulpt.version(), N, R, D, ROUNDS, STEPS))
    worst = 0.0
    for name, host in hosts(target).items():
        def by_hand():
            prompt.forward(out=E)
            G[...] = 0
            host(E, G)
            prompt.zero_grad()
            prompt.backward(G)
            opt.step()

        def callback():
            opt.train_step(host)

        by_hand(), callback()  # warm up
        a, b, ratio = compare(by_hand, callback)
        worst = max(worst, ratio)
        print("  %-15s by hand %7.3f ms/step   train_step %7.3f ms/step   ratio %.2fx"
              % (name, a * 1e3, b * 1e3, ratio))
    print("callback overhead: at most %.2fx the by-hand loop (target <= 1.30x)" % worst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
