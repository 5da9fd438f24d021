"""A randomized, seeded, multi-threaded state machine over the Python binding, checked
against a single-threaded NumPy float64 reference model.

Each worker thread owns some prompts with SGD optimizers and mirrors every parameter in a
float64 model: E = (Z . P) * s + b, dZ = (G * s) . P^T, ds = sum(G * (Z . P)), db = sum(G),
p -= lr * grad.  Operations, drawn from a seeded stream: create, forward (checked against
the model), train_step with a loss that behaves or misbehaves (raises, returns NaN, the wrong
shape, KeyboardInterrupt, a nested step, closes its objects), close, copy, pickle,
save/load, bank add/remove/materialise on a bank shared by all threads, and other threads'
forwards on prompts being stepped.  Every result must match the model (to float32 rounding)
and every exception must be a documented one; after a failed step nothing may have changed.

ULPT_STATE_OPS sets the operations per thread (default 2000, what `make check` runs),
ULPT_STATE_SEED the first seed, ULPT_STATE_THREADS the number of threads (default 3).
"""
import copy
import os
import pickle
import threading
import time

import numpy as np
import pytest

import ulpt

OPS = int(os.environ.get("ULPT_STATE_OPS", "2000"))
SEED = int(os.environ.get("ULPT_STATE_SEED", "2112"))
THREADS = int(os.environ.get("ULPT_STATE_THREADS", "3"))
DIM = 16
MODEL = "sm"

DOCUMENTED = (ulpt.BusyError, ulpt.CallbackError, ulpt.NonFiniteError, ulpt.ClosedError,
              ulpt.NotFoundError, ulpt.InvalidArgumentError)


class Model:
    """The float64 reference of one prompt and its SGD optimizer."""

    def __init__(self, prompt, lr):
        self.n, self.r = prompt.n_tokens, prompt.rank
        self.P = prompt.projection(0).matrix.astype(np.float64)
        self.set(prompt.params)
        self.lr = lr

    def set(self, flat):
        flat = np.asarray(flat, np.float64)
        nr = self.n * self.r
        self.Z = flat[:nr].reshape(self.n, self.r).copy()
        self.s = flat[nr:nr + DIM].copy()
        self.b = flat[nr + DIM:].copy()

    def flat(self):
        return np.concatenate([self.Z.ravel(), self.s, self.b])

    def forward(self):
        return (self.Z @ self.P) * self.s + self.b

    def step(self, G):
        G = np.asarray(G, np.float64)
        ZP = self.Z @ self.P
        dZ, ds, db = (G * self.s) @ self.P.T, (G * ZP).sum(0), G.sum(0)
        self.Z -= self.lr * dZ
        self.s -= self.lr * ds
        self.b -= self.lr * db


def close(a, b, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    err = float(np.abs(a - b).max())
    assert err <= 2e-5 * scale, "%s: off by %g" % (what, err)


class Worker:
    def __init__(self, seed, bank, shared, failures):
        self.rng = np.random.default_rng(seed)
        self.bank, self.shared, self.failures = bank, shared, failures
        self.items = []          # [prompt, optimizer, model]
        self.bank_ids = {}       # id -> E (float32) it must materialise to
        self.ops = 0

    def fail(self, text):
        self.failures.append(text)

    def create(self):
        rng = self.rng
        p = ulpt.Prompt(n_tokens=int(rng.integers(1, 5)), dim=DIM,
                        rank=int(rng.integers(1, 4)), projection_seed=int(rng.integers(0, 2**63)),
                        init_seed=int(rng.integers(0, 2**63)), init_std=0.5)
        p.meta["model"] = MODEL
        lr = float(rng.choice([0.01, 0.05]))
        opt = ulpt.Optimizer(p, kind="sgd", lr=lr, weight_decay=0.0)
        self.items.append([p, opt, Model(p, lr)])
        with self.shared["lock"]:
            self.shared["prompts"].append(p)

    def pick(self):
        if not self.items:
            self.create()
        return self.items[int(self.rng.integers(len(self.items)))]

    def check(self, item, what):
        p, opt, model = item
        close(p.params, model.flat(), what + ": params")
        close(p.forward(), model.forward(), what + ": forward")
        assert opt.step_count == opt.step_count

    def train(self):
        item = self.pick()
        p, opt, model = item
        rng = self.rng
        target = rng.standard_normal(p.shape).astype(np.float32)
        how = rng.choice(["good", "good", "tuple", "raise", "nan", "shape", "interrupt",
                          "nested", "close"])
        before = p.params.copy()
        grads_before = p.grads.copy()
        steps = opt.step_count
        used = {}

        def loss(E, G):
            close(E, model.forward(), "E in the callback")
            np.subtract(E, target, out=G)
            used["G"] = G.copy()
            if how == "raise":
                raise ZeroDivisionError("host")
            if how == "nan":
                return float("nan")
            if how == "shape":
                return 1.0, np.zeros((1, 1))
            if how == "interrupt":
                raise KeyboardInterrupt
            if how == "nested":
                try:
                    opt.train_step(lambda E: 0.0)
                except ulpt.BusyError:
                    used["busy"] = True
            if how == "close":
                for obj in (p, opt):
                    try:
                        obj.close()
                    except ulpt.BusyError:
                        used.setdefault("busy_close", 0)
                        used["busy_close"] += 1
            return float((G * G).sum())

        p.zero_grad()
        grads_before = p.grads.copy()
        try:
            if how == "tuple":
                def tuple_loss(E):
                    G = E - target
                    used["G"] = G.copy()
                    return float((G * G).sum()), G
                opt.train_step(tuple_loss)
            else:
                opt.train_step(loss)
        except KeyboardInterrupt:
            assert how == "interrupt"
            ok = False
        except DOCUMENTED as exc:
            assert how in ("raise", "nan", "shape") or isinstance(exc, ulpt.BusyError), repr(exc)
            ok = False
        else:
            assert how in ("good", "tuple", "nested", "close"), how
            ok = True
        if ok:
            model.step(used["G"])
            assert opt.step_count == steps + 1
            if how == "nested":
                assert used.get("busy")
            if how == "close":
                assert used.get("busy_close") == 2 and not p.closed and not opt.closed
        else:
            np.testing.assert_array_equal(p.params, before)
            np.testing.assert_array_equal(p.grads, grads_before)
            assert opt.step_count == steps
        self.check(item, "after a %s step" % how)

    def copies(self):
        item = self.pick()
        p, opt, model = item
        how = self.rng.choice(["deepcopy", "pickle", "bytes", "save"])
        if how == "deepcopy":
            p2, o2 = copy.deepcopy([p, opt])
        elif how == "pickle":
            p2, o2 = pickle.loads(pickle.dumps([p, opt]))
        elif how == "bytes":
            o2 = ulpt.Optimizer.from_bytes(opt.to_bytes())
            p2 = o2.prompt
        else:
            path = os.path.join(self.shared["tmp"], "w%d.ulpt" % id(self))
            opt.save_checkpoint(path)
            o2 = ulpt.Optimizer.load_checkpoint(path)
            p2 = o2.prompt
        assert o2.prompt is p2 and o2.step_count == opt.step_count
        assert o2.options == opt.options
        np.testing.assert_array_equal(p2.params, p.params)
        new = [p2, o2, copy.deepcopy(model)]
        self.items.append(new)
        self.check(new, "a %s copy" % how)

    def close_one(self):
        if len(self.items) < 2:
            return
        p, opt, _ = self.items.pop(int(self.rng.integers(len(self.items))))
        view = p.params
        (p if self.rng.random() < 0.5 else opt).close()
        p.close()
        opt.close()
        for call in (p.forward, opt.step, lambda: opt.train_step(lambda E: 0.0)):
            with pytest.raises(ulpt.ClosedError):
                call()
        view[:] = view + 0     # the memory stays the view's

    def bank_op(self):
        rng = self.rng
        if self.bank_ids and rng.random() < 0.3:
            ident = list(self.bank_ids)[int(rng.integers(len(self.bank_ids)))]
            self.bank.remove(ident)
            del self.bank_ids[ident]
            with pytest.raises(ulpt.NotFoundError):
                self.bank.materialise([ident])
        elif rng.random() < 0.5 or not self.bank_ids:
            p, _, model = self.pick()
            ident = self.bank.add(p)
            self.bank_ids[ident] = p.forward()
            close(self.bank_ids[ident], model.forward(), "bank add")
        else:
            ids = list(self.bank_ids)
            outs = self.bank.materialise(ids)
            for ident, out in zip(ids, outs):
                np.testing.assert_array_equal(out, self.bank_ids[ident])
            ident = ids[0]
            buf = np.zeros((self.bank.n_tokens(ident) + 2, DIM + 3), np.float32)
            self.bank.materialise_into([(ident, buf[1:-1, :DIM])])
            np.testing.assert_array_equal(buf[1:-1, :DIM], self.bank_ids[ident])
            assert not buf[0].any() and not buf[-1].any() and not buf[:, DIM:].any()

    def foreign_forward(self):
        """A forward of another thread's prompt (maybe inside its step): always one of
        the values that prompt takes, never a mix -- checked as finite and shaped."""
        with self.shared["lock"]:
            prompts = list(self.shared["prompts"])
        if not prompts:
            return
        q = prompts[int(self.rng.integers(len(prompts)))]
        try:
            E = q.forward()
        except ulpt.ClosedError:
            return
        assert E.shape == q.shape and np.isfinite(E).all()

    def run(self):
        ops = [self.create, self.train, self.train, self.train, self.copies, self.close_one,
               self.bank_op, self.bank_op, self.foreign_forward]
        for _ in range(OPS):
            op = ops[int(self.rng.integers(len(ops)))]
            try:
                op()
            except Exception as exc:  # a wrong value or an undocumented exception
                self.fail("%s: %s: %r" % (op.__name__, type(exc).__name__, exc))
                return
            self.ops += 1
        for item in self.items:
            self.check(item, "at the end")


def test_state_machine_against_a_float64_model(tmp_path):
    start = time.monotonic()
    bank = ulpt.Bank(model=MODEL, dim=DIM)
    shared = {"lock": threading.Lock(), "prompts": [], "tmp": str(tmp_path)}
    failures = []
    workers = [Worker(SEED + i, bank, shared, failures) for i in range(THREADS)]
    threads = [threading.Thread(target=w.run, name="worker-%d" % i)
               for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(w.ops for w in workers)
    print("state machine: %d operations, seeds %d..%d, %d threads, %.1f s, %d failures"
          % (total, SEED, SEED + THREADS - 1, THREADS, time.monotonic() - start,
             len(failures)))
    assert failures == []
    assert total == OPS * THREADS
