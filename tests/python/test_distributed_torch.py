"""The data-parallel recipe of docs/DESIGN.md ("Data parallelism") with torch.distributed.

Two processes (gloo backend, CPU tensors) each back-propagate their half of every global
batch through a small host loss, all-reduce Prompt.grads in place through
torch.from_numpy, and step; rank 0 alone checkpoints.  They must end bit-identical to
each other and within 1e-5 of one process that saw the whole batch (the tolerance of
tests/mpi/check-mpi.sh: float sums taken in another order, N*lr*delta), with the same
global gradient at the first step.

The workers run in a fresh interpreter that imports torch once and forks, so that no
thread pool of this pytest process is forked.

Run from the repository root:  /usr/bin/python3 -m pytest -q tests/python
"""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import ulpt

N_TOKENS, DIM, EXAMPLES, BATCH, STEPS, LR = 4, 32, 24, 8, 20, 0.05
TOL = 1e-5


def host_loss(E, X, y):
    """The host model: logistic loss on <X_i, E>, mean over the examples given."""
    margin = (X * E).sum((1, 2)) / DIM ** 0.5
    return torch.nn.functional.softplus(-y * margin).mean()


def train(rank, world, rendezvous, out):
    """The sketch of docs/DESIGN.md, on `world` processes (1: no torch.distributed)."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method="file://" + rendezvous, rank=rank,
                                world_size=world)
    g = torch.Generator().manual_seed(0)  # the same data on every rank
    X = torch.randn(EXAMPLES, N_TOKENS, DIM, generator=g)
    y = torch.randint(0, 2, (EXAMPLES,), generator=g).float() * 2 - 1
    p = ulpt.Prompt(n_tokens=N_TOKENS, dim=DIM, rank=2, projection_seed=1, init_seed=1)
    opt = ulpt.Optimizer(p, lr=LR, max_grad_norm=1.0)
    grads = torch.from_numpy(p.grads)  # the prompt's own buffer
    for step in range(STEPS):
        batch = [(step * BATCH + i) % EXAMPLES for i in range(BATCH)]
        shard = batch[BATCH * rank // world: BATCH * (rank + 1) // world]
        E = torch.from_numpy(p.forward()).requires_grad_()
        loss = host_loss(E, X[shard], y[shard]) * (len(shard) / BATCH)
        loss.backward()
        p.zero_grad()
        p.backward(E.grad.numpy())
        if world > 1:
            dist.all_reduce(grads, op=dist.ReduceOp.SUM)
        if step == 0:  # the global gradient, before the step clips it in place
            np.save(os.path.join(out, "grads-%d-rank%d.npy" % (world, rank)), p.grads.copy())
        opt.step()
        if rank == 0 and (step + 1) % 10 == 0:
            opt.save_checkpoint(os.path.join(out, "ckpt-%d-rank%d.ulpt" % (world, rank)))
    np.save(os.path.join(out, "params-%d-rank%d.npy" % (world, rank)), p.params.copy())
    if world > 1:
        dist.destroy_process_group()


def worker_main(out):
    import torch.multiprocessing as mp
    train(0, 1, None, out)
    mp.start_processes(train, args=(2, os.path.join(out, "rendezvous"), out), nprocs=2,
                       start_method="fork")


def test_two_processes_reach_the_parameters_of_one(tmp_path):
    # gloo over the loopback interface: the test needs no network
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo")
    subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path)], check=True,
                   timeout=600, env=env)
    one = np.load(tmp_path / "params-1-rank0.npy")
    r0 = np.load(tmp_path / "params-2-rank0.npy")
    r1 = np.load(tmp_path / "params-2-rank1.npy")
    assert np.array_equal(r0, r1), "the two ranks hold different parameters"
    diff = np.abs(r0.astype(np.float64) - one).max()
    moved = np.abs(one.astype(np.float64) - ulpt.Prompt(
        n_tokens=N_TOKENS, dim=DIM, rank=2, projection_seed=1, init_seed=1).params).max()
    print("2 processes vs 1: max |a-b| %.3g (training moved the parameters by %.3g)"
          % (diff, moved))
    assert diff <= TOL
    # AdamW would hide a gradient scaled by a constant; the first gradient shows it
    g1, g2 = np.load(tmp_path / "grads-1-rank0.npy"), np.load(tmp_path / "grads-2-rank0.npy")
    assert np.abs(g2 - g1).max() <= 1e-5 * np.abs(g1).max()
    assert moved > 1000 * TOL  # the comparison is not between two untrained prompts
    # rank 0 alone wrote a checkpoint, and it holds the final parameters
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("ckpt")) == \
        ["ckpt-1-rank0.ulpt", "ckpt-2-rank0.ulpt"]
    opt = ulpt.Optimizer.load_checkpoint(str(tmp_path / "ckpt-2-rank0.ulpt"))
    assert opt.step_count == STEPS
    assert np.array_equal(opt.prompt.params, r0)


if __name__ == "__main__":
    worker_main(sys.argv[1])
