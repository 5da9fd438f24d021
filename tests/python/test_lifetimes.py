"""No Python program can crash the interpreter through ulpt: each reproduction of a
lifetime bug survives with the right behaviour or exception.  `make
check-python-valgrind` runs this file under valgrind's memcheck, which fails on any
invalid read or write."""
import copy
import gc
import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

import ulpt


def make_prompt(**kw):
    options = dict(n_tokens=4, dim=16, projection_seed=3, init_seed=1)
    options.update(kw)
    p = ulpt.Prompt(**options)
    p.meta["model"] = "m"
    return p


def mse(target):
    def loss_fn(E, G):
        np.subtract(E, target, out=G)
        loss = float((G * G).sum())
        G *= 2
        return loss
    return loss_fn


# ----------------------------------------------------------------------------- copies


def test_deepcopy_makes_an_independent_prompt_and_deleting_both_is_safe():
    p = make_prompt()
    p.params[:] = np.arange(p.num_params, dtype=np.float32) / 7
    q = copy.deepcopy(p)
    assert q.handle != p.handle
    np.testing.assert_array_equal(q.params, p.params)
    assert dict(q.meta) == {"model": "m"}
    q.params[0] = 99
    q.meta["model"] = "other"
    assert p.params[0] == 0 and p.meta["model"] == "m"
    r = copy.copy(p)
    np.testing.assert_array_equal(r.params, p.params)
    assert r.handle not in (p.handle, q.handle)
    del p, q, r
    gc.collect()


def test_pickle_stores_the_prompt_file_bytes_and_loads_in_another_process():
    p = make_prompt()
    p.params[:] = np.linspace(-1, 1, p.num_params, dtype=np.float32)
    data = pickle.dumps(p)
    assert p.to_bytes(level=0) in data           # the file format, not a pointer
    q = pickle.loads(data)
    np.testing.assert_array_equal(q.params, p.params)
    assert q.meta == p.meta
    code = ("import pickle, sys, ulpt; p = pickle.loads(sys.stdin.buffer.read()); "
            "print(repr(float(p.params.astype('float64').sum())), p.meta['model'])")
    r = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True)
    assert r.returncode == 0, r.stderr
    total, model = r.stdout.decode().split()
    assert float(total) == float(p.params.astype(np.float64).sum()) and model == "m"


def test_optimizer_copies_and_pickles_go_through_a_checkpoint_and_stay_paired():
    p = make_prompt()
    opt = ulpt.Optimizer(p, lr=0.05)
    target = np.ones(p.shape, np.float32)
    for _ in range(3):
        opt.train_step(mse(target))
    for copier in (lambda x: copy.deepcopy(x), lambda x: pickle.loads(pickle.dumps(x))):
        p2, opt2 = copier([p, opt])
        assert opt2.prompt is p2 and p2 is not p
        assert opt2.step_count == 3
        np.testing.assert_array_equal(p2.params, p.params)
        # the moments came along: the same further steps give bit-identical parameters
        a, b = copy.deepcopy(opt), opt2
        for _ in range(2):
            a.train_step(mse(target))
            b.train_step(mse(target))
        np.testing.assert_array_equal(a.prompt.params, b.prompt.params)
        assert opt.step_count == 3  # the original did not move
    single = copy.copy(opt)
    assert single.prompt is not p and single.step_count == 3


# ----------------------------------------------------------------------------- views


def test_a_view_outlives_close_and_writing_it_is_safe():
    p = make_prompt()
    v, g = p.params, p.grads
    p.close()
    v[:] = 1            # was "double free or corruption"
    g[:] = 2
    assert v.sum() == v.size
    with pytest.raises(ulpt.ClosedError):
        p.params
    with pytest.raises(ValueError):      # ClosedError is a ValueError, as for files
        p.forward()
    p.close()  # twice is harmless
    del p
    gc.collect()
    v[:] = 3            # the memory is still the view's
    assert (v == 3).all()
    del v, g
    gc.collect()


def test_a_view_keeps_the_prompt_alive_after_the_last_reference_goes():
    v = make_prompt().params
    gc.collect()
    v[:] = 0.5
    assert float(v.sum()) == 0.5 * v.size
    z = make_prompt().Z
    z[:] = 1
    assert z.shape == (4, 2)


def test_projection_views_keep_their_projection_alive():
    m = ulpt.Projection(seed=1, rank=2, dim=8).matrix
    gc.collect()
    assert m.shape == (2, 8) and np.isfinite(m).all() and not m.flags.writeable
    proj = make_prompt().projection(0)     # borrowed from a prompt that is gone
    gc.collect()
    np.testing.assert_array_equal(proj.matrix, ulpt.Projection(seed=3, rank=2, dim=16).matrix)


def test_the_callbacks_views_stay_valid_after_the_optimizer_goes():
    p = make_prompt()
    opt = ulpt.Optimizer(p)
    kept = []

    def loss_fn(E, G):
        kept.append((E, G, E.copy()))
        return 0.0

    opt.train_step(loss_fn)
    E, G, want = kept.pop()
    del opt, p, loss_fn
    gc.collect()
    np.testing.assert_array_equal(E, want)
    G[:] = 1


# ----------------------------------------------------------------------------- optimizers


def test_an_optimizer_keeps_its_prompt_alive_after_the_with_block():
    with make_prompt() as q:
        o = ulpt.Optimizer(q, lr=0.1)
    assert q.closed
    q.close()
    o.step()            # read freed memory before
    loss = o.train_step(mse(np.zeros((4, 16), np.float32)))
    assert loss > 0 and o.step_count == 2
    with pytest.raises(ulpt.ClosedError):
        o.prompt.params
    del q
    gc.collect()
    o.step()
    o.close()
    with pytest.raises(ulpt.ClosedError):
        o.step()


def test_an_optimizer_for_a_closed_prompt_is_refused():
    p = make_prompt()
    p.close()
    with pytest.raises(ulpt.ClosedError):
        ulpt.Optimizer(p)


# ----------------------------------------------------------------------------- in use


def test_close_inside_the_loss_callback_raises_and_changes_nothing():
    p = make_prompt()
    opt = ulpt.Optimizer(p, lr=0.1)
    before = p.params.copy()
    seen = {}

    def closes(obj):
        def loss_fn(E, G):
            try:
                obj.close()
            except ulpt.BusyError as exc:
                seen["error"] = exc
                raise
            return 0.0
        return loss_fn

    for obj in (p, opt):
        with pytest.raises(ulpt.CallbackError) as err:
            opt.train_step(closes(obj))
        assert isinstance(err.value.__cause__, ulpt.BusyError)
        assert isinstance(seen.pop("error"), RuntimeError)
        assert not obj.closed
    np.testing.assert_array_equal(p.params, before)
    assert opt.step_count == 0
    opt.train_step(mse(np.zeros(p.shape, np.float32)))   # both still work
    assert opt.step_count == 1


def test_inside_the_callback_reads_work_and_modifications_raise_BusyError():
    p = make_prompt()
    opt = ulpt.Optimizer(p, lr=0.1)
    results = {}

    def loss_fn(E, G):
        results["forward"] = np.array_equal(p.forward(), E)
        results["meta"] = p.meta["model"]
        for name, call in (("backward", lambda: p.backward(np.zeros(p.shape))),
                           ("zero_grad", p.zero_grad), ("step", opt.step),
                           ("meta", lambda: p.meta.__setitem__("k", "v")),
                           ("train_step", lambda: opt.train_step(lambda E: 0.0)),
                           ("optimizer", lambda: ulpt.Optimizer(p))):
            with pytest.raises(ulpt.BusyError):
                call()
        return 0.0

    opt.train_step(loss_fn)
    assert results == {"forward": True, "meta": "m"}
    assert "k" not in p.meta


def test_a_second_thread_cannot_step_an_optimizer_whose_step_is_running():
    p = make_prompt()
    opt = ulpt.Optimizer(p)
    inside, release = threading.Event(), threading.Event()
    errors = []

    def slow(E, G):
        inside.set()
        release.wait(10)
        return 0.0

    t = threading.Thread(target=lambda: opt.train_step(slow))
    t.start()
    assert inside.wait(10)
    for call in (opt.step, lambda: opt.train_step(lambda E, G: 0.0), p.close, opt.close):
        try:
            call()
        except ulpt.BusyError as exc:
            errors.append(exc)
    release.set()
    t.join()
    assert len(errors) == 4
    assert opt.step_count == 1 and not p.closed


def test_many_prompts_created_and_dropped_leave_nothing_behind():
    for i in range(200):
        p = ulpt.Prompt(n_tokens=2, dim=8, init_seed=i)
        o = ulpt.Optimizer(p)
        o.train_step(lambda E: (1.0, np.ones_like(E)))
        if i % 2:
            p.close()
        del p, o
    gc.collect()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_process_exit_with_live_objects_and_views_is_clean():
    code = ("import ulpt, numpy as np\n"
            "p = ulpt.Prompt(n_tokens=2, dim=8); o = ulpt.Optimizer(p); v = p.params\n"
            "o.train_step(lambda E, G: 0.0); p.close(); cycle = [o]; cycle.append(cycle)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ""
