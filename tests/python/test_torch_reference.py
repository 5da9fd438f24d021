"""An independent PyTorch reference for libulpt's numerics, through the ctypes binding.

Forward and backward are recomputed in float64 from the library's own parameters and
projection matrices; the optimizer is checked step by step against torch.optim (SGD, Adam,
AdamW), torch.nn.utils.clip_grad_norm_ and LambdaLR with the Hugging Face schedule
lambdas described in include/ulpt.h.

Run from the repository root:  /usr/bin/python3 -m pytest -q tests/python
"""

import math
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ulpt
from ulpt._native import lib

torch.set_num_threads(1)

GOLDEN = 0x9E3779B97F4A7C15

# ----------------------------------------------------------------------------- helpers


def split_params(prompt, flat):
    """(Z, s, b) from a flat [Z | s | b] vector; s = 1 / b = 0 where the flags drop them."""
    n, r, d, flags = prompt.n_tokens, prompt.rank, prompt.dim, prompt.flags
    lib = torch if isinstance(flat, torch.Tensor) else np
    z = flat[: n * r].reshape(n, r)
    off = n * r
    if flags & ulpt.NO_SCALE:
        s = lib.ones(d, dtype=flat.dtype)
    else:
        s, off = flat[off: off + d], off + d
    if flags & ulpt.NO_SHIFT:
        b = lib.zeros(d, dtype=flat.dtype)
    else:
        b, off = flat[off: off + d], off + d
    assert off == flat.shape[0]
    return z, s, b


def projections(prompt):
    """The library's own P_g as float64 arrays (identity: np.eye)."""
    out = []
    for g in range(prompt.n_groups):
        P = prompt.projection(g).matrix
        out.append(np.eye(prompt.dim) if P is None else P.astype(np.float64))
    return out


def torch_forward(prompt, Z, s, b, Ps):
    """E = (Z_g @ P_g) * s + b in torch (any dtype), groups of consecutive rows."""
    rows = prompt.n_tokens // prompt.n_groups
    parts = [Z[g * rows: (g + 1) * rows] @ torch.as_tensor(P, dtype=Z.dtype)
             for g, P in enumerate(Ps)]
    return torch.cat(parts, 0) * s + b


def close_to(got, want, rtol=1e-5):
    """Elementwise rtol with an absolute floor scaled to the data (float32 round-off)."""
    want = np.asarray(want, dtype=np.float64)
    scale = max(np.abs(want).max(), 1e-30)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# (n_tokens, rank, dim, n_groups, flags, kind)
PROMPT_CONFIGS = [
    (6, 2, 16, 1, 0, ulpt.PROJ_XAVIER_UNIFORM),
    (8, 2, 37, 2, 0, ulpt.PROJ_KAIMING_UNIFORM),
    (8, 8, 32, 2, ulpt.NO_SCALE, ulpt.PROJ_KAIMING_UNIFORM),
    (4, 2, 24, 2, ulpt.NO_SHIFT, ulpt.PROJ_GAUSSIAN),
    (6, 8, 20, 1, ulpt.NO_SCALE | ulpt.NO_SHIFT, ulpt.PROJ_RADEMACHER),
    (9, 8, 65, 3, 0, ulpt.PROJ_GAUSSIAN),
    (4, 16, 16, 2, 0, ulpt.PROJ_IDENTITY),
    (5, 12, 12, 1, ulpt.NO_SCALE | ulpt.NO_SHIFT, ulpt.PROJ_IDENTITY),
    (100, 2, 768, 4, 0, ulpt.PROJ_XAVIER_UNIFORM),  # the headline setting at a real width
]
CONFIG_IDS = ["n%d-r%d-d%d-g%d-f%d-k%d" % c for c in PROMPT_CONFIGS]


PROJ_SEED = 1007


def make_prompt(config):
    n, r, d, g, flags, kind = config
    return ulpt.Prompt(n_tokens=n, rank=r, dim=d, n_groups=g, flags=flags,
                       projection_kind=kind, projection_seed=PROJ_SEED, init_seed=7)


def perturbed_prompt(config, rng):
    prompt = make_prompt(config)
    prompt.params[:] = rng.standard_normal(prompt.num_params).astype(np.float32)
    return prompt


# ----------------------------------------------------------------------------- prompt


@pytest.mark.parametrize("config", PROMPT_CONFIGS, ids=CONFIG_IDS)
def test_forward_matches_float64_torch_projection_scale_shift(config):
    rng = np.random.default_rng(1)
    with perturbed_prompt(config, rng) as prompt:
        flat = torch.tensor(prompt.params.astype(np.float64))
        Z, s, b = split_params(prompt, flat)
        want = torch_forward(prompt, Z, s, b, projections(prompt)).numpy()
        got = prompt.forward()
        assert got.shape == (prompt.n_tokens, prompt.dim) and got.dtype == np.float32
        close_to(got, want)


@pytest.mark.parametrize("config", PROMPT_CONFIGS, ids=CONFIG_IDS)
def test_prompt_projection_groups_have_documented_seed_kind_and_shape(config):
    n, r, d, g, flags, kind = config
    with make_prompt(config) as prompt:
        assert (prompt.n_tokens, prompt.rank, prompt.dim, prompt.n_groups, prompt.flags) \
            == (n, r, d, g, flags)
        assert prompt.num_params == n * r + d * (not flags & ulpt.NO_SCALE) \
            + d * (not flags & ulpt.NO_SHIFT)
        mats = []
        for group in range(g):
            proj = prompt.projection(group)
            assert proj.seed == (PROJ_SEED + group * GOLDEN) % 2**64
            assert (proj.rank, proj.dim, proj.kind) == (r, d, kind)
            mats.append(proj.matrix)
        with pytest.raises(IndexError):
            prompt.projection(g)
        if kind == ulpt.PROJ_IDENTITY:
            assert all(m is None for m in mats)
        else:
            # Each group's P is the standalone projection of its seed, and groups differ.
            for group, m in enumerate(mats):
                with ulpt.Projection(seed=(PROJ_SEED + group * GOLDEN) % 2**64, rank=r,
                                     dim=d, kind=kind) as ref:
                    np.testing.assert_array_equal(m, ref.matrix)
            if g > 1:
                assert not np.array_equal(mats[0], mats[1])


@pytest.mark.parametrize("config", PROMPT_CONFIGS, ids=CONFIG_IDS)
def test_backward_matches_torch_autograd_of_sum_E_times_G(config):
    rng = np.random.default_rng(2)
    with perturbed_prompt(config, rng) as prompt:
        G = rng.standard_normal((prompt.n_tokens, prompt.dim)).astype(np.float32)

        flat = torch.tensor(prompt.params.astype(np.float64), requires_grad=True)
        Z, s, b = split_params(prompt, flat)
        E = torch_forward(prompt, Z, s, b, projections(prompt))
        (E * torch.tensor(G, dtype=torch.float64)).sum().backward()
        want = flat.grad.numpy()  # same [Z | s | b] layout as the library's grads

        prompt.zero_grad()
        assert not prompt.grads.any()
        prompt.backward(G)
        once = prompt.grads.copy()
        close_to(once, want)

        prompt.backward(G)  # backward ADDS
        close_to(prompt.grads, 2 * want)
        close_to(prompt.grads, 2 * once, rtol=1e-6)  # not bitwise: BLAS may fuse the add

        prompt.zero_grad()
        assert not prompt.grads.any()


def test_forward_and_backward_honour_row_stride_and_leave_padding_untouched():
    config = (6, 2, 13, 2, 0, ulpt.PROJ_XAVIER_UNIFORM)
    rng = np.random.default_rng(3)
    with perturbed_prompt(config, rng) as prompt:
        n, d, ld = prompt.n_tokens, prompt.dim, 20

        buf = np.full((n, ld), 123.5, dtype=np.float32)
        assert lib.ulpt_prompt_forward(prompt.handle, buf.ctypes.data, ld) == 0
        np.testing.assert_array_equal(buf[:, :d], prompt.forward())
        assert (buf[:, d:] == 123.5).all()

        G = rng.standard_normal((n, d)).astype(np.float32)
        Gpad = np.full((n, ld), np.nan, dtype=np.float32)  # padding must never be read
        Gpad[:, :d] = G
        prompt.zero_grad()
        prompt.backward(G)
        dense = prompt.grads.copy()
        prompt.zero_grad()
        assert lib.ulpt_prompt_backward(prompt.handle, Gpad.ctypes.data, ld) == 0
        np.testing.assert_array_equal(prompt.grads, dense)

        with pytest.raises(ulpt.InvalidArgumentError) as err:
            ulpt.check(lib.ulpt_prompt_forward(prompt.handle, buf.ctypes.data, d - 1))
        assert err.value.code == ulpt.ERR_INVALID and "row stride 12" in str(err.value)
        # The binding itself accepts any row stride >= dim and refuses smaller ones.
        buf[:] = 7.0
        np.testing.assert_array_equal(prompt.forward(out=buf[:, :d]), prompt.forward())
        assert (buf[:, d:] == 7.0).all()


# ----------------------------------------------------------------------------- optimizer


def hf_lambda(schedule, warmup, total):
    """Hugging Face get_{constant,linear,cosine}_schedule_with_warmup, as in ulpt.h (the
    cosine one clamped at progress 1 so it stays at 0 past total_steps)."""

    def constant(t):
        return t / max(1, warmup) if t < warmup else 1.0

    def linear(t):
        if t < warmup:
            return t / max(1, warmup)
        return max(0.0, (total - t) / max(1, total - warmup))

    def cosine(t):
        if t < warmup:
            return t / max(1, warmup)
        progress = min(1.0, (t - warmup) / max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return {ulpt.SCHED_CONSTANT: constant, ulpt.SCHED_LINEAR: linear,
            ulpt.SCHED_COSINE: cosine}[schedule]


# name -> (library options, torch optimizer factory)
OPTIMIZERS = {
    "sgd-momentum": (dict(kind=ulpt.OPT_SGD, lr=0.05, momentum=0.9, weight_decay=0.0),
                     lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.9, foreach=False)),
    "sgd-momentum-wd": (dict(kind=ulpt.OPT_SGD, lr=0.05, momentum=0.8, weight_decay=0.03),
                        lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.8,
                                                  weight_decay=0.03, foreach=False)),
    "adam-l2": (dict(kind=ulpt.OPT_ADAM, lr=0.02, beta1=0.85, beta2=0.99, eps=1e-6,
                     weight_decay=0.05),
                lambda p: torch.optim.Adam([p], lr=0.02, betas=(0.85, 0.99), eps=1e-6,
                                           weight_decay=0.05, foreach=False)),
    "adamw": (dict(kind=ulpt.OPT_ADAMW, lr=0.02, beta1=0.8, beta2=0.95, eps=1e-7,
                   weight_decay=0.1),
              lambda p: torch.optim.AdamW([p], lr=0.02, betas=(0.8, 0.95), eps=1e-7,
                                          weight_decay=0.1, foreach=False)),
}
SCHEDULES = {  # name -> (schedule, warmup_steps, total_steps)
    "constant-warmup": (ulpt.SCHED_CONSTANT, 5, 0),
    "linear-warmup": (ulpt.SCHED_LINEAR, 5, 25),
    "cosine-warmup": (ulpt.SCHED_COSINE, 5, 25),
}
N_STEPS = 30  # runs past total_steps: linear and cosine must then stay at 0


def random_grads(rng, count, steps):
    """Gradients whose global norm ranges over ~0.1 .. 4, so clipping at 1 bites sometimes."""
    grads = rng.standard_normal((steps, count))
    norms = np.exp(rng.uniform(math.log(0.1), math.log(4.0), steps))
    grads *= (norms / np.linalg.norm(grads, axis=1))[:, None]
    return grads.astype(np.float32)


def run_against_torch(opt_name, sched_name, clip, steps=N_STEPS, nan_at=None):
    lib_opts, make_torch_opt = OPTIMIZERS[opt_name]
    schedule, warmup, total = SCHEDULES[sched_name]
    rng = np.random.default_rng(zlib.crc32(("%s/%s/%g" % (opt_name, sched_name, clip)).encode()))
    prompt = ulpt.Prompt(n_tokens=4, rank=2, dim=8, projection_seed=5, init_seed=11)
    prompt.params[:] = rng.standard_normal(prompt.num_params).astype(np.float32)
    opt = ulpt.Optimizer(prompt, max_grad_norm=clip, schedule=schedule,
                         warmup_steps=warmup, total_steps=total, **lib_opts)

    param = torch.nn.Parameter(torch.tensor(prompt.params.copy()))
    topt = make_torch_opt(param)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, hf_lambda(schedule, warmup, total))
    grads = random_grads(rng, prompt.num_params, steps)
    clipped_steps = 0

    for t in range(steps):
        if t == nan_at:
            bad = grads[t].copy()
            bad[3] = np.nan
            before = prompt.params.copy()
            prompt.grads[:] = bad
            with pytest.raises(ulpt.NonFiniteError) as err:
                opt.step()
            assert err.value.code == ulpt.ERR_NONFINITE
            np.testing.assert_array_equal(prompt.params, before)
            assert opt.step_count == t

        assert opt.step_count == t
        torch_lr = topt.param_groups[0]["lr"]
        np.testing.assert_allclose(opt.lr, torch_lr, rtol=1e-6, atol=1e-12,
                                   err_msg="lr before step %d" % t)

        prompt.grads[:] = grads[t]
        param.grad = torch.tensor(grads[t])
        opt.step()
        if clip:
            norm = torch.nn.utils.clip_grad_norm_([param], clip)
            clipped_steps += bool(norm > clip)
        topt.step()
        sched.step()

        np.testing.assert_allclose(prompt.grads, param.grad.numpy(), rtol=1e-6, atol=1e-7,
                                   err_msg="clipped gradient at step %d" % t)
        np.testing.assert_allclose(prompt.params, param.detach().numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg="parameters after step %d" % t)

    assert opt.step_count == steps
    if clip:
        assert 0 < clipped_steps < steps  # both branches of the clip were exercised
    opt.close()
    prompt.close()
    return param.detach().numpy()


@pytest.mark.parametrize("clip", [0.0, 1.0], ids=["noclip", "clip1"])
@pytest.mark.parametrize("sched_name", list(SCHEDULES))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_optimizer_trajectory_and_lr_match_torch_optim_with_hf_schedule(
        opt_name, sched_name, clip):
    run_against_torch(opt_name, sched_name, clip)


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adamw"])
def test_optimizer_step_refuses_nan_gradient_and_keeps_state_for_later_steps(opt_name):
    # The NaN step must change neither parameters, moments nor the schedule: the run
    # afterwards still follows torch, which never saw the NaN.
    run_against_torch(opt_name, "linear-warmup", 1.0, steps=12, nan_at=6)


def test_optimizer_default_options_are_adamw_lr1e3_wd001_like_torch():
    with ulpt.Prompt(n_tokens=3, rank=2, dim=5, init_seed=2) as prompt, \
            ulpt.Optimizer(prompt) as opt:
        param = torch.nn.Parameter(torch.tensor(prompt.params.copy()))
        topt = torch.optim.AdamW([param], foreach=False)  # torch's defaults
        rng = np.random.default_rng(4)
        for t in range(5):
            assert opt.lr == pytest.approx(1e-3, rel=1e-6)
            g = rng.standard_normal(prompt.num_params).astype(np.float32)
            prompt.grads[:] = g
            param.grad = torch.tensor(g)
            opt.step()
            topt.step()
            np.testing.assert_allclose(prompt.params, param.detach().numpy(),
                                       rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_optimizer_defaults_match_torch_for_each_kind(kind):
    # weight decay defaults to torch's for the kind: 0 for SGD and Adam, 0.01 for AdamW
    ukind = {"sgd": ulpt.OPT_SGD, "adam": ulpt.OPT_ADAM, "adamw": ulpt.OPT_ADAMW}[kind]
    with ulpt.Prompt(n_tokens=3, rank=2, dim=5, init_seed=2) as prompt, \
            ulpt.Optimizer(prompt, kind=ukind) as opt:
        param = torch.nn.Parameter(torch.tensor(prompt.params.copy()))
        make = {"sgd": lambda: torch.optim.SGD([param], lr=1e-3, foreach=False),
                "adam": lambda: torch.optim.Adam([param], foreach=False),
                "adamw": lambda: torch.optim.AdamW([param], foreach=False)}[kind]
        topt = make()
        rng = np.random.default_rng(5)
        for t in range(25):
            g = rng.standard_normal(prompt.num_params).astype(np.float32)
            prompt.grads[:] = g
            param.grad = torch.tensor(g)
            opt.step()
            topt.step()
        np.testing.assert_allclose(prompt.params, param.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_option_defaults_are_the_header_macros():
    p = ulpt.prompt_defaults()
    assert (p.version, p.n_tokens, p.rank, p.dim, p.n_groups, p.projection_seed,
            p.projection_kind, p.init_seed, p.init_std, p.flags) == \
        (1, 0, 2, 0, 1, 0, ulpt.PROJ_XAVIER_UNIFORM, 0, 1.0, 0)
    o = ulpt.optimizer_defaults()
    assert (o.version, o.kind, o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, o.momentum,
            o.max_grad_norm, o.schedule, o.warmup_steps, o.total_steps) == \
        (1, ulpt.OPT_ADAMW, 1e-3, 0.9, 0.999, 1e-8, -1.0, 0.0, 0.0, ulpt.SCHED_CONSTANT, 0, 0)
    with pytest.raises(TypeError):
        ulpt.Optimizer(ulpt.Prompt(n_tokens=1, dim=2), learning_rate=1.0)


# ----------------------------------------------------------------------------- train step


def test_train_step_equals_forward_autograd_backward_and_torch_adamw_step():
    config = (6, 2, 16, 2, 0, ulpt.PROJ_XAVIER_UNIFORM)
    rng = np.random.default_rng(5)
    prompt = perturbed_prompt(config, rng)
    CLIP = 50.0  # the gradient norm falls from ~54 to ~43: early steps clip, later ones don't
    opt = ulpt.Optimizer(prompt, kind=ulpt.OPT_ADAMW, lr=0.05, weight_decay=0.1,
                         max_grad_norm=CLIP, schedule=ulpt.SCHED_LINEAR, warmup_steps=2,
                         total_steps=10)
    target = rng.standard_normal((prompt.n_tokens, prompt.dim)).astype(np.float32)
    Ps = projections(prompt)

    param = torch.nn.Parameter(torch.tensor(prompt.params.copy()))
    topt = torch.optim.AdamW([param], lr=0.05, weight_decay=0.1, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, hf_lambda(ulpt.SCHED_LINEAR, 2, 10))
    T64 = torch.tensor(target, dtype=torch.float64)

    seen = []
    clipped_steps = 0

    def loss_fn(E):
        seen.append(E.copy())
        diff = E.astype(np.float64) - target
        return float((diff ** 2).sum()), (2 * diff).astype(np.float32)

    for t in range(8):
        # Stale gradients must not leak in: train_step zeroes them before backward.
        prompt.grads[:] = 1e3
        loss = opt.train_step(loss_fn)

        flat64 = param.detach().double().requires_grad_(True)
        Z, s, b = split_params(prompt, flat64)
        E = torch_forward(prompt, Z, s, b, Ps)
        torch_loss = ((E - T64) ** 2).sum()
        torch_loss.backward()
        close_to(seen[-1], E.detach().numpy())
        assert loss == pytest.approx(torch_loss.item(), rel=1e-5)

        param.grad = flat64.grad.float()
        clipped_steps += bool(torch.nn.utils.clip_grad_norm_([param], CLIP) > CLIP)
        # The step leaves the (clipped) gradients of this step's backward in the prompt.
        np.testing.assert_allclose(prompt.grads, param.grad.numpy(), rtol=1e-5,
                                   atol=1e-5 * float(param.grad.abs().max()))
        topt.step()
        sched.step()
        np.testing.assert_allclose(prompt.params, param.detach().numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg="parameters after train step %d" % t)
        assert opt.step_count == t + 1
    assert seen[-1].shape == (prompt.n_tokens, prompt.dim)
    assert 0 < clipped_steps < 8
    opt.close()
    prompt.close()


def test_train_step_with_raising_loss_fn_raises_callback_error_and_changes_nothing():
    with ulpt.Prompt(n_tokens=4, rank=2, dim=8, init_seed=3) as prompt, \
            ulpt.Optimizer(prompt, lr=0.1) as opt:
        prompt.grads[:] = 0.25
        params, grads = prompt.params.copy(), prompt.grads.copy()

        def bad(E):
            raise RuntimeError("host model failed")

        with pytest.raises(ulpt.CallbackError) as err:
            opt.train_step(bad)
        assert err.value.code == ulpt.ERR_CALLBACK
        assert isinstance(err.value.__cause__, RuntimeError)

        def wrong_shape(E):
            return 1.0, np.zeros(3, np.float32)

        with pytest.raises(ulpt.CallbackError) as err:
            opt.train_step(wrong_shape)
        assert err.value.code == ulpt.ERR_CALLBACK
        assert isinstance(err.value.__cause__, ulpt.InvalidArgumentError)

        def nan_loss(E):
            return float("nan"), np.zeros_like(E)

        with pytest.raises(ulpt.NonFiniteError) as err:
            opt.train_step(nan_loss)
        assert err.value.code == ulpt.ERR_NONFINITE

        np.testing.assert_array_equal(prompt.params, params)
        np.testing.assert_array_equal(prompt.grads, grads)
        assert opt.step_count == 0
