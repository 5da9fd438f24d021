"""PyTorch's side of `make bench`: the same work, timed the same way (median of 51).

    bench_torch.py step N R D THREADS    one ULPT training step: E = s*(Z@P)+b, backward
                                         from a given dL/dE, AdamW step, zero_grad
    bench_torch.py uniform COUNT         torch.empty(COUNT).uniform_(), one thread

Prints one number, microseconds: the thread's CPU time with one thread, as
tests/bench_step.c measures libulpt (other jobs on a shared machine do not count), and
wall-clock time with more.  bench_step runs this and prints the ratios.
"""
import sys
import time

import torch


def median_us(fn, threads=1, reps=51):
    clock = time.thread_time if threads == 1 else time.perf_counter
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        t = clock()
        fn()
        times.append((clock() - t) * 1e6)
    times.sort()
    return times[reps // 2]


def step(n, r, d, threads):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, r, generator=gen).requires_grad_()
    p = torch.rand(r, d, generator=gen) * 2 - 1  # frozen
    s = torch.ones(d, requires_grad=True)
    b = torch.zeros(d, requires_grad=True)
    g = torch.zeros(n, d)  # what a null host hands back
    opt = torch.optim.AdamW([z, s, b], lr=1e-3)

    def one():
        e = s * (z @ p) + b
        e.backward(g)
        opt.step()
        opt.zero_grad()

    return median_us(one, threads)


def main():
    kind = sys.argv[1]
    if kind == "step":
        n, r, d, threads = (int(a) for a in sys.argv[2:6])
        torch.set_num_threads(threads)
        print("%.3f" % step(n, r, d, threads))
    elif kind == "uniform":
        count = int(sys.argv[2])
        torch.set_num_threads(1)
        print("%.3f" % median_us(lambda: torch.empty(count).uniform_()))
    else:
        raise SystemExit("bench_torch.py: unknown kind %r" % kind)


if __name__ == "__main__":
    main()
