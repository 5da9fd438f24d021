"""Issue 21's Python reproductions, each a regression test: a hostile but pure-Python
program gets the right numbers or a documented exception, never a wrong value or a crash.
Each test failed before the fix (a wrong E, a swapped loss function, an ignored SIGINT, a
double free, a silently broken torch module, OverflowError, ...)."""
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ulpt


def zero_grad_prompt(**kw):
    options = dict(n_tokens=20, dim=768, rank=2, projection_seed=5, init_seed=6)
    options.update(kw)
    return ulpt.Prompt(**options)


# ----------------------------------------------------------------------------- threads


@pytest.mark.parametrize("rank", [1, 2])
def test_a_forward_in_another_thread_during_a_train_step_gets_the_right_E(rank):
    """Was: the forward took the prompt's scratch while the step's backward wrote it:
    wrong E, and parameters updated although the callback left G at zero."""
    p = zero_grad_prompt(n_tokens=64, dim=4096, rank=rank)
    opt = ulpt.Optimizer(p, kind="adam", weight_decay=0.0, lr=0.1)
    want_E, want_params = p.forward(), p.params.copy()
    stop = threading.Event()
    wrong, done = [], [0]

    def reader():
        while not stop.is_set():
            E = p.forward()
            done[0] += 1
            if not np.array_equal(E, want_E):
                wrong.append(float(np.abs(E - want_E).max()))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 2.0
        steps = 0
        while time.monotonic() < deadline:
            try:
                opt.train_step(lambda E, G: 0.0)    # G stays zero: Adam moves nothing
            except ulpt.BusyError:      # what 1.1 raised while a forward ran; see below
                continue
            steps += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert wrong == []
    np.testing.assert_array_equal(p.params, want_params)
    assert steps > 10 and done[0] > 0


def test_train_step_waits_for_forwards_in_other_threads_instead_of_raising_BusyError():
    p = zero_grad_prompt()
    opt = ulpt.Optimizer(p, lr=0.01)
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            p.forward()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(300):
            opt.train_step(lambda E: (float((E * E).sum()), 2 * E))
    finally:
        stop.set()
        t.join()
    assert opt.step_count == 300


def test_two_threads_stepping_one_optimizer_never_run_each_others_loss_function():
    """Was: train_step(f1) and train_step(f2) swapped their loss functions."""
    p = zero_grad_prompt(dim=64)
    opt = ulpt.Optimizer(p, lr=0.01)
    calls = {"A": [], "B": []}
    busy = {"A": 0, "B": 0}

    def fn_of(name):
        def loss(E, G):
            calls[name].append(threading.current_thread().name)
            time.sleep(0.0005)
            return 0.0
        return loss

    def run(name):
        f = fn_of(name)
        for _ in range(200):
            try:
                opt.train_step(f)
            except ulpt.BusyError as exc:
                assert "in use by a running Optimizer.train_step in thread" in str(exc)
                busy[name] += 1

    threads = [threading.Thread(target=run, args=(n,), name=n) for n in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in "AB":
        assert set(calls[name]) <= {name}
        assert len(calls[name]) + busy[name] == 200
    assert opt.step_count == len(calls["A"]) + len(calls["B"])


def test_a_zo_step_inside_a_zo_steps_callback_cannot_hijack_it():
    """Was: calls f, busy, g, g, g and a loss of 4.0 instead of 1.0."""
    p = zero_grad_prompt(n_tokens=2, dim=8)
    zo = ulpt.ZOTrainer(ulpt.Optimizer(p), directions=2, batch=1)
    calls = []

    def g(E):
        calls.append("g")
        return [4.0] * len(E)

    def f(E):
        calls.append("f")
        try:
            zo.step(g)
        except ulpt.BusyError:
            calls.append("busy")
        return [1.0] * len(E)

    assert zo.step(f) == 1.0
    assert calls == ["f", "busy"] * 4           # g never runs


# ----------------------------------------------------------------------------- signals


def test_SIGINT_while_the_step_is_still_in_C_is_a_KeyboardInterrupt_and_changes_nothing():
    """Was: "Exception ignored on calling ctypes callback function" and CallbackError
    "the loss callback returned 459999680" (an uninitialised value)."""
    p = ulpt.Prompt(n_tokens=2000, dim=8192, rank=256, projection_seed=1, init_seed=2)
    opt = ulpt.Optimizer(p, lr=0.1)
    before = p.params.copy()
    calls = []

    def host(E, G):
        calls.append(1)
        G[:] = 1
        return 1.0

    go = threading.Event()

    def interrupt():
        go.wait(10)
        time.sleep(0.02)                       # well inside the 2000 x 8192 forward
        os.kill(os.getpid(), signal.SIGINT)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    t = threading.Thread(target=interrupt)
    t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            go.set()
            opt.train_step(host)
    finally:
        t.join()
        signal.signal(signal.SIGINT, old)
    assert calls == []                         # the host's loss never ran
    np.testing.assert_array_equal(p.params, before)
    assert opt.step_count == 0
    assert not p.grads.any()


def test_a_signal_handler_that_does_not_raise_runs_and_the_step_goes_on():
    p = zero_grad_prompt(n_tokens=500, dim=4096, rank=64)
    opt = ulpt.Optimizer(p, lr=0.1)
    seen = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    t = threading.Timer(0.01, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        t.start()
        for _ in range(20):
            opt.train_step(lambda E: (1.0, np.ones_like(E)))
    finally:
        t.cancel()
        signal.signal(signal.SIGUSR1, old)
    assert seen == [signal.SIGUSR1] and opt.step_count == 20
    assert signal.getsignal(signal.SIGUSR1) is old


# ----------------------------------------------------------------------------- allocator


def test_an_allocator_that_raises_is_a_MemoryError_not_a_double_free():
    """Was: "free(): double free detected in tcache 2" (abort).  In a child process, so
    that the old behaviour fails the test instead of killing the run."""
    code = """
import ctypes, ulpt
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
calls = [0]
def alloc(user, size):
    calls[0] += 1
    if calls[0] > 1:
        raise MemoryError("host out of memory")
    return libc.malloc(size)
def realloc(user, ptr, size):
    raise MemoryError("host out of memory")
def free(user, ptr):
    libc.free(ptr)
ulpt.set_allocator(ulpt.ulpt_allocator(ulpt.ALLOC_FN(alloc), ulpt.REALLOC_FN(realloc),
                                       ulpt.FREE_FN(free), None))
try:
    ulpt.Prompt(n_tokens=4, dim=8)
except MemoryError as exc:
    print(type(exc).__name__, exc.code == ulpt.ERR_NOMEM)
ulpt.set_allocator(None)
print(ulpt.Prompt(n_tokens=4, dim=8).forward().shape)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["OutOfMemoryError True", "(4, 8)"]
    assert "Exception ignored" not in r.stderr


# ----------------------------------------------------------------------------- torch


def torch_module():
    torch = pytest.importorskip("torch")
    import ulpt.torch
    m = ulpt.torch.ULPTPrompt(n_tokens=6, dim=32, rank=2, projection_seed=4, init_seed=2)
    return torch, m


@pytest.mark.parametrize("move", ["to_float64", "double", "half", "to_meta", "share_memory",
                                  "to_empty", "bfloat16", "type_double"])
def test_moving_the_torch_module_is_refused_at_once_and_leaves_it_working(move):
    """Was: each succeeded and left the module broken for good (even .float())."""
    torch, m = torch_module()
    want = m().detach().clone()
    calls = {"to_float64": lambda: m.to(torch.float64), "double": m.double, "half": m.half,
             "to_meta": lambda: m.to("meta"), "share_memory": m.share_memory,
             "to_empty": lambda: m.to_empty(device="cpu"), "bfloat16": m.bfloat16,
             "type_double": lambda: m.type(torch.float64)}
    with pytest.raises(RuntimeError, match="ULPTPrompt cannot be moved"):
        calls[move]()
    m.float(), m.cpu(), m.to("cpu"), m.to(torch.float32)    # no-ops are fine
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in m.parameters())
    E = m()
    torch.testing.assert_close(E.detach(), want, rtol=0, atol=0)
    E.sum().backward()
    assert m.Z.grad is not None and torch.isfinite(m.Z.grad).all()


def test_an_in_place_change_of_a_parameter_between_forward_and_backward_is_caught():
    """Was: unnoticed, dZ 10x off; torch raises for its own operations."""
    torch, m = torch_module()
    E = m()
    with torch.no_grad():
        m.s.mul_(10)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        E.sum().backward()
    m.zero_grad()
    m().sum().backward()                   # a new forward is fine
    assert torch.isfinite(m.Z.grad).all()


# ----------------------------------------------------------------------------- smaller


@pytest.mark.parametrize("make", [
    lambda: ulpt.Optimizer(ulpt.Prompt(n_tokens=2, dim=4), lr=10**400),
    lambda: ulpt.Prompt(n_tokens=2, dim=4, init_std=10**400),
    lambda: ulpt.ZOTrainer(ulpt.Optimizer(ulpt.Prompt(n_tokens=2, dim=4)), epsilon=-10**400),
])
def test_a_number_too_large_for_a_double_is_a_ValueError_not_OverflowError(make):
    with pytest.raises(ValueError, match="out of range for a double") as err:
        make()
    assert isinstance(err.value, ulpt.InvalidArgumentError)


def test_a_reversed_row_stride_in_materialise_into_is_named_as_such():
    """Was: "row stride 18446744073709550592"."""
    p = zero_grad_prompt(n_tokens=4, dim=16)
    p.meta["model"] = "m"
    bank = ulpt.Bank(model="m", dim=16)
    ident = bank.add(p)
    out = np.zeros((4, 16), np.float32)
    with pytest.raises(ulpt.InvalidArgumentError) as err:
        bank.materialise_into([(ident, out[::-1])])
    assert "row stride is -64 bytes for rows of 64" in str(err.value)
    assert "18446744" not in str(err.value) and not out.any()
    bank.materialise_into([(ident, out)])
    np.testing.assert_array_equal(out, p.forward())


def test_from_bytes_cannot_take_a_prompt_from_its_optimizer():
    """Was: from_bytes(data, prompt=p) silently detached p from its optimizer, and was
    allowed inside a callback of p's step."""
    p = zero_grad_prompt(n_tokens=2, dim=8)
    opt = ulpt.Optimizer(p, lr=0.5)
    data = opt.to_bytes()
    handle = p.handle
    with pytest.raises(ulpt.InvalidArgumentError, match="the prompt is in use"):
        ulpt.Optimizer.from_bytes(data, prompt=p)
    assert p.handle == handle
    caught = []

    def host(E, G):
        try:
            ulpt.Optimizer.from_bytes(data, prompt=p)
        except ulpt.BusyError as exc:
            caught.append(exc)
        G[:] = 1
        return 1.0

    opt.train_step(host)
    assert len(caught) == 1 and p.handle == handle
    assert opt.prompt is p and opt.step_count == 1
    # the step moved the prompt the optimizer and the user both see
    assert not np.array_equal(ulpt.Optimizer.from_bytes(data).prompt.params, p.params)
    # a prompt nothing uses may take the checkpoint's
    q = ulpt.Prompt(n_tokens=2, dim=8)
    o2 = ulpt.Optimizer.from_bytes(data, prompt=q)
    assert o2.prompt is q and q.handle != handle


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    info = header["prompt_embeddings"]
    a, b = info["data_offsets"]
    return np.frombuffer(raw[8 + n + a:8 + n + b], np.float32).reshape(info["shape"])


@pytest.mark.parametrize("dtype", ["f16", "bf16", "f32"])
def test_save_pretrained_writes_the_adapter_of_the_parameters_as_stored(tmp_path, dtype):
    """Was: an adapter from the f32 parameters beside an f16 .ulpt file (2e-5 apart)."""
    p = zero_grad_prompt(n_tokens=4, dim=64)
    p.params[:] = np.random.default_rng(3).standard_normal(p.num_params).astype(np.float32)
    p.save_pretrained(tmp_path, dtype=dtype)
    stored = ulpt.Prompt.load(tmp_path / "ulpt_prompt.ulpt")
    np.testing.assert_array_equal(read_safetensors(tmp_path / "adapter_model.safetensors"),
                                  stored.forward())
    if dtype != "f32":
        assert not np.array_equal(stored.params, p.params)


# ------------------------------------------------- the review of the merged bindings


def test_zo_losses_view_kept_past_the_callback_keeps_the_trainer_memory_alive():
    """Was: the losses array was a bare view of the trainer's memory: kept past the
    callback and the trainer freed, it read and wrote freed memory (valgrind)."""
    import gc
    import weakref
    p = ulpt.Prompt(n_tokens=4, dim=8)
    zo = ulpt.ZOTrainer(ulpt.Optimizer(p, lr=0.1), directions=2)
    kept = []

    def f(E, out):
        kept.append(out)
        out[:] = 1.0

    assert zo.step(f) == 1.0
    alive = weakref.ref(zo._h)
    zo.close()
    del zo, p, f
    gc.collect()
    assert alive() is not None and alive().ptr      # the view holds the trainer
    np.testing.assert_array_equal(kept[0], [1.0] * 4)
    kept.clear()
    gc.collect()
    assert alive() is None


def _closing(monkeypatch, obj, name, seen):
    """Replace lib.`name` by a call that first closes `obj` (as another thread may while
    the call runs) and records whether the C object is still alive for the real call."""
    import gc
    import weakref
    from ulpt._native import lib
    real = getattr(lib, name)
    alive = weakref.ref(obj._h)

    def call(*args):
        obj.close()
        gc.collect()
        seen.append(alive() is not None)
        return real(*args) if alive() is not None else 0

    monkeypatch.setattr(lib, name, call)


@pytest.mark.parametrize("make, attr, fn", [
    (lambda: ulpt.Bank(model="m", dim=4), "dim", "ulpt_bank_dim"),
    (lambda: ulpt.Bank(model="m", dim=4), "model", "ulpt_bank_model"),
    (lambda: ulpt.Optimizer(ulpt.Prompt(n_tokens=2, dim=4)), "step_count",
     "ulpt_optimizer_step_count"),
    (lambda: ulpt.Optimizer(ulpt.Prompt(n_tokens=2, dim=4)), "lr", "ulpt_optimizer_lr_double"),
    (lambda: ulpt.Optimizer(ulpt.Prompt(n_tokens=2, dim=4)), "lr_float32", "ulpt_optimizer_lr"),
    (lambda: ulpt.Optimizer(ulpt.Prompt(n_tokens=2, dim=4)), "options",
     "ulpt_optimizer_get_options"),
    (lambda: ulpt.ZOTrainer(ulpt.Optimizer(ulpt.Prompt(n_tokens=2, dim=4))), "position",
     "ulpt_zo_position"),
    (lambda: ulpt.ZOTrainer(ulpt.Optimizer(ulpt.Prompt(n_tokens=2, dim=4))), "options",
     "ulpt_zo_get_options"),
])
def test_a_close_during_a_property_call_does_not_free_the_object_under_it(
        monkeypatch, make, attr, fn):
    """Was: these properties called C without holding the handle: a close() in another
    thread freed a Bank during the call (valgrind: invalid read).  An optimizer's and a
    trainer's memory is also kept by their callback state, so for them this checks that
    the call holds the handle, as every other call does."""
    obj, seen = make(), []
    _closing(monkeypatch, obj, fn, seen)
    getattr(obj, attr)
    assert seen == [True]


def test_a_close_between_two_c_calls_of_one_method_is_not_an_attribute_error(monkeypatch):
    """Was: `self._h.ptr` inside the held section: AttributeError 'NoneType' when a
    close() came in between; the method now finishes on the handle it holds."""
    p, seen = ulpt.Prompt(n_tokens=2, dim=4, meta={"a": "1", "b": "2"}), []
    _closing(monkeypatch, p, "ulpt_prompt_meta_count", seen)
    assert list(iter(p.meta_bytes)) == [b"a", b"b"]    # the keys read before the close
    assert seen == [True] and p.closed
    with pytest.raises(ulpt.ClosedError):
        p.meta_bytes


def test_save_refuses_to_replace_a_fifo_and_keeps_following_symlinks(tmp_path):
    """Was: the atomic save renamed its temporary file over whatever was at the path (as
    root, p.save("/dev/null") replaced the device with a regular file)."""
    import stat
    p = ulpt.Prompt(n_tokens=2, dim=4)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for save in (p.save, p.export_safetensors, ulpt.Optimizer(p).save_checkpoint):
        with pytest.raises(ulpt.FileIOError, match="not a regular file") as caught:
            save(fifo)
        assert str(fifo) in str(caught.value)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo"]          # no temporary left
    target, link = tmp_path / "target.ulpt", tmp_path / "link.ulpt"
    target.write_bytes(b"old")
    os.symlink(target, link)
    p.save(link)
    assert os.path.islink(link)
    np.testing.assert_array_equal(ulpt.Prompt.load(target).params, p.params)


def test_torch_backward_from_two_threads_on_one_module_gives_the_right_gradients():
    """Was: the backward saved the gradients, zeroed them, ran, copied and added back as
    separate calls, so two threads' backwards interleaved and lost each other's share."""
    torch = pytest.importorskip("torch")
    import ulpt.torch
    torch.set_num_threads(1)
    m = ulpt.torch.ULPTPrompt(n_tokens=8, dim=64, rank=2)
    ref = ulpt.torch.ULPTPrompt(n_tokens=8, dim=64, rank=2)
    G = [torch.full((8, 64), 1.0), torch.full((8, 64), -0.5)]
    n = 300
    for g in G:
        for _ in range(n):
            ref().backward(g)
    errors = []

    def run(g):
        try:
            for _ in range(n):
                m().backward(g)
        except Exception as exc:          # noqa: BLE001 -- reported below
            errors.append(repr(exc))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=(g,)) for g in G]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    for got, want in ((m.Z.grad, ref.Z.grad), (m.s.grad, ref.s.grad), (m.b.grad, ref.b.grad),
                      (torch.from_numpy(m.prompt.grads), torch.from_numpy(ref.prompt.grads))):
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= 1e-4 * scale     # summation order only


def test_torch_load_state_dict_of_another_prompt_is_refused_before_changing_anything():
    """Was: MismatchError raised by set_extra_state, which torch calls after it has copied
    the parameters: the refused load had already overwritten Z, s and b."""
    torch = pytest.importorskip("torch")
    import ulpt.torch
    a = ulpt.torch.ULPTPrompt(n_tokens=4, dim=8, rank=2, projection_seed=1, init_seed=1)
    b = ulpt.torch.ULPTPrompt(n_tokens=4, dim=8, rank=2, projection_seed=2, init_seed=2)
    before, E0 = a.prompt.params.copy(), a().detach().clone()
    for strict in (True, False):
        with pytest.raises(ulpt.MismatchError, match="projection_seed"):
            a.load_state_dict(b.state_dict(), strict=strict)
        np.testing.assert_array_equal(a.prompt.params, before)
        assert torch.equal(a().detach(), E0)
    c = ulpt.torch.ULPTPrompt(n_tokens=4, dim=8, rank=2, projection_seed=1, init_seed=9)
    a.load_state_dict(c.state_dict())                   # the same prompt identity: loads
    np.testing.assert_array_equal(a.prompt.params, c.prompt.params)


def test_copy_copy_of_a_zo_trainer_trains_its_own_copy():
    """Was: copy.copy shared the optimizer, so stepping the copy trained the original's
    prompt (Optimizer's copy already went through a checkpoint)."""
    import copy
    p = ulpt.Prompt(n_tokens=2, dim=4)
    zo = ulpt.ZOTrainer(ulpt.Optimizer(p, lr=0.1), directions=2, seed=3)
    zo.position = 5
    z2 = copy.copy(zo)
    assert z2.optimizer is not zo.optimizer and z2.prompt is not zo.prompt
    assert z2.options == zo.options and z2.position == 5
    np.testing.assert_array_equal(z2.prompt.params, p.params)
    before = p.params.copy()
    z2.step(lambda E: [float(np.sum(e * e)) for e in E])
    np.testing.assert_array_equal(p.params, before)
    assert not np.array_equal(z2.prompt.params, before) and zo.position == 5


def _rebind_b(m):
    import torch
    with torch.no_grad():
        m.b.data = torch.full((4,), 100.0)


def _replace_s(m):
    import torch
    m.s = torch.nn.Parameter(torch.zeros(4))


def _weight_norm_s(m):
    import torch
    torch.nn.utils.weight_norm(m, name="s", dim=0)


def _other_prompt(m):
    m.prompt = ulpt.Prompt(n_tokens=2, dim=4, rank=1, init_seed=2)


@pytest.mark.parametrize("change, says", [
    (_rebind_b, "ULPTPrompt.b no longer shares"),
    (_replace_s, "ULPTPrompt.s no longer shares"),
    (_weight_norm_s, "ULPTPrompt.s is no longer a Parameter"),
    (_other_prompt, "ULPTPrompt.prompt is no longer the prompt"),
])
def test_torch_module_refuses_parameters_or_prompt_that_no_longer_share_memory(change, says):
    """Was: only Z's address was checked: rebinding b.data, a new s, weight_norm on s or
    `m.prompt = other` were silently ignored (E from other numbers than the Parameters)."""
    pytest.importorskip("torch")
    import ulpt.torch
    m = ulpt.torch.ULPTPrompt(n_tokens=2, dim=4, rank=1, init_seed=1)
    m()
    change(m)
    with pytest.raises(RuntimeError, match=says):
        m()


def _in_thread(fn, timeout=10.0):
    """fn() in a daemon thread: ('ok', value), ('raised', exc) or ('hung', None)."""
    out = []

    def run():
        try:
            out.append(("ok", fn()))
        except BaseException as exc:       # noqa: BLE001 -- returned to the test
            out.append(("raised", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ("hung", None)


def test_two_loss_callbacks_reading_each_others_prompt_do_not_wait_for_each_other():
    """Was: each callback's forward() waited for the other thread's step, forever.  A
    thread inside a step does not wait for another step: BusyError, and the other step
    completes."""
    p1, p2 = ulpt.Prompt(n_tokens=4, dim=8), ulpt.Prompt(n_tokens=4, dim=8)
    o1, o2 = ulpt.Optimizer(p1, lr=0.1), ulpt.Optimizer(p2, lr=0.1)
    barrier = threading.Barrier(2, timeout=10)

    def make(other):
        def loss(E, G):
            if barrier.n_waiting is not None:
                try:
                    barrier.wait()      # both steps are inside their callbacks
                except threading.BrokenBarrierError:
                    pass
            other.forward()
            G[:] = E
            return 1.0
        return loss

    results = [None, None]

    def run(k, o, other):
        results[k] = _in_thread(lambda: o.train_step(make(other)), timeout=20)

    threads = [threading.Thread(target=run, args=(0, o1, p2)),
               threading.Thread(target=run, args=(1, o2, p1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = sorted(r[0] for r in results)
    assert "hung" not in kinds, results
    assert kinds in (["ok", "raised"], ["raised", "raised"]), results
    for kind, value in results:
        if kind == "raised":
            assert isinstance(value, ulpt.CallbackError)
            assert isinstance(value.__cause__, ulpt.BusyError)
            assert "inside a step itself" in str(value.__cause__)


def test_a_hold_whose_exit_never_ran_does_not_block_writers_for_ever():
    """Was: a signal handler raising between _Use.__enter__'s bookkeeping and the with
    body (or before __exit__'s) left the reader count up: every later write hung."""
    import gc
    from ulpt._handle import _Use
    p = ulpt.Prompt(n_tokens=4, dim=8)
    use = _Use(((p._handle(), "Prompt.forward"),), False)
    use.__enter__()                       # ... and the exception that skips __exit__
    del use
    gc.collect()
    assert _in_thread(p.zero_grad, timeout=10)[0] == "ok"


def test_a_write_from_the_thread_that_reads_the_object_raises_instead_of_hanging():
    """Was: a signal handler calling p.zero_grad() inside p.forward() waited for the
    forward it had interrupted: a hang."""
    from ulpt._handle import _Use
    p = ulpt.Prompt(n_tokens=4, dim=8)

    def handler_inside_a_forward():
        with _Use(((p._handle(), "Prompt.forward"),), False):
            p.zero_grad()

    kind, exc = _in_thread(handler_inside_a_forward)
    assert kind == "raised" and isinstance(exc, ulpt.BusyError), (kind, exc)
    assert "reading the object already" in str(exc)
    p.zero_grad()                         # and nothing stays held


def test_sigalrm_handlers_raising_inside_forwards_leave_nothing_held():
    """Was: after many handler exceptions between the bookkeeping and the try, a
    zero_grad in another thread hung (reader count leaked)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals go to the main thread")
    p = ulpt.Prompt(n_tokens=4, dim=64)

    class Tick(Exception):
        pass

    state = {"armed": True, "ticks": 0}

    def on_alarm(signum, frame):
        if state["armed"]:
            state["ticks"] += 1
            raise Tick()

    deadline = time.monotonic() + 1.5

    def loop():
        while time.monotonic() < deadline:
            try:
                try:
                    p.forward()
                except (Tick, ulpt.BusyError):
                    pass
            except Tick:
                pass

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
    while True:
        try:
            loop()
            state["armed"] = False
            break
        except Tick:                      # raised outside loop()'s tries
            pass
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
    ticks = state["ticks"]
    assert ticks > 0
    assert _in_thread(p.zero_grad, timeout=10)[0] == "ok"


def test_save_pretrained_is_all_or_nothing(tmp_path, monkeypatch):
    """Was: a failure after the prompt file was replaced left a new .ulpt beside the old
    adapter and checkpoint."""
    p = ulpt.Prompt(n_tokens=2, dim=4, meta={"model": "m"})
    opt = ulpt.Optimizer(p, lr=0.5)
    opt.save_pretrained(tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    opt.train_step(lambda E, G: (np.copyto(G, E), 1.0)[1])

    def fail(self, path):
        raise ulpt.FileIOError(ulpt.ERR_IO, "export failed", None, str(path))

    monkeypatch.setattr(ulpt.Prompt, "export_safetensors", fail)
    with pytest.raises(ulpt.FileIOError, match="export failed"):
        opt.save_pretrained(tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before


# ------------------------------------------------------------- aliasing and re-init


def reference_E(p):
    """E in float64 from the parameters, P and the formula, for the aliasing tests."""
    z, s, b = (None if a is None else a.astype(np.float64) for a in p.split(p.params))
    P = p.projection().matrix.astype(np.float64)
    return (z @ P) * (1.0 if s is None else s) + (0.0 if b is None else b)


def test_forward_into_the_prompts_own_parameters_is_refused():
    """Was: forward(out=) over s wrote E into the scale while reading it: a wrong E and a
    changed prompt."""
    p = ulpt.Prompt(n_tokens=1, dim=8, rank=2, projection_seed=1, init_seed=2)
    p.s[:] = np.linspace(0.5, 2.0, 8, dtype=np.float32)
    before = p.params.copy()
    for alias in (p.s.reshape(1, 8), p.params[1:9].reshape(1, 8), p.b.reshape(1, 8)):
        with pytest.raises(ulpt.InvalidArgumentError, match="overlaps the prompt's parameters"):
            p.forward(out=alias)
    np.testing.assert_array_equal(p.params, before)
    out = np.empty((1, 8), np.float32)
    np.testing.assert_allclose(p.forward(out=out), reference_E(p), rtol=1e-6, atol=1e-7)


def test_backward_of_a_G_that_is_the_gradient_buffer_uses_G_as_given():
    """G may be the gradient buffer backward adds into: the result is that of a copy."""
    p = ulpt.Prompt(n_tokens=1, dim=8, rank=2, projection_seed=1, init_seed=2)
    q = ulpt.Prompt(n_tokens=1, dim=8, rank=2, projection_seed=1, init_seed=2)
    p.grads[:] = np.arange(18, dtype=np.float32) / 7
    q.grads[:] = p.grads
    G = p.grads[2:10].reshape(1, 8)          # the gradient of s, as G
    Gcopy = G.copy()
    p.backward(G)
    q.backward(Gcopy)
    np.testing.assert_array_equal(p.grads, q.grads)


def test_init_from_embeddings_of_the_prompts_own_parameters_fits_them_as_given():
    p = ulpt.Prompt(n_tokens=1, dim=8, rank=2, projection_seed=1, init_seed=2)
    q = ulpt.Prompt(n_tokens=1, dim=8, rank=2, projection_seed=1, init_seed=2)
    target = p.params[2:10].reshape(1, 8)
    t = target.copy()
    r1 = p.init_from_embeddings(target, max_iters=20, tol=0.0)
    r2 = q.init_from_embeddings(t, max_iters=20, tol=0.0)
    assert r1 == r2
    np.testing.assert_array_equal(p.params, q.params)


def test_a_read_only_view_cannot_be_made_writable():
    """Was: projection().matrix was read-only by a flag anyone could set back, and writing
    through it changed P for every prompt sharing it."""
    p = ulpt.Prompt(n_tokens=4, dim=8, rank=2, projection_seed=1, init_seed=2)
    m = p.projection().matrix
    with pytest.raises(ValueError):
        m.setflags(write=True)
    with pytest.raises(ValueError):
        m[0, 0] = 1.0
    np.testing.assert_allclose(p.forward(), reference_E(p), rtol=1e-6, atol=1e-7)


def test_init_on_a_live_object_is_refused():
    """Was: p.__init__(...) swapped the C prompt under its optimizer, which went on
    stepping the old one."""
    p = ulpt.Prompt(n_tokens=4, dim=8, rank=2, projection_seed=1, init_seed=2)
    opt = ulpt.Optimizer(p, lr=0.1)
    zo = ulpt.ZOTrainer(opt)
    bank = ulpt.Bank(model="m", dim=8)
    proj = ulpt.Projection(seed=1, rank=2, dim=8)
    for obj, kw in ((p, dict(n_tokens=2, dim=8)), (opt, dict(prompt=p)), (zo, dict(optimizer=opt)),
                    (bank, dict(model="n", dim=8)), (proj, dict(seed=2, rank=2, dim=8))):
        h = obj.handle
        kw = dict(kw)
        args = (kw.pop("prompt"),) if "prompt" in kw else (kw.pop("optimizer"),) if "optimizer" in kw else ()
        with pytest.raises(ulpt.InvalidArgumentError, match="on an existing"):
            type(obj).__init__(obj, *args, **kw)
        assert obj.handle == h
    assert p.n_tokens == 4 and bank.model == "m"
