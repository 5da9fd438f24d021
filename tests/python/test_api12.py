"""The 1.2 functions from Python (Optimizer.options, checkpoints to and from bytes through
the library, forward-only checkpoints in memory, ULPT_ERR_BUSY) and the package's module
graph (no import cycles)."""
import ast
import dataclasses
import importlib
from pathlib import Path

import numpy as np
import pytest

import ulpt


def trained(kind="adamw", **kw):
    p = ulpt.Prompt(n_tokens=3, dim=8, projection_seed=1, init_seed=2)
    opt = ulpt.Optimizer(p, kind=kind, lr=0.05, schedule="cosine", warmup_steps=2,
                         total_steps=20, max_grad_norm=0.5, **kw)
    for _ in range(3):
        opt.train_step(lambda E: (float((E * E).sum()), 2 * E))
    return p, opt


def test_options_read_back_as_created_and_after_a_round_trip(tmp_path):
    p, opt = trained(beta1=0.8, eps=1e-6)
    o = opt.options
    assert o == opt.get_options()
    assert (o.kind, o.lr, o.beta1, o.eps, o.schedule, o.warmup_steps, o.total_steps,
            o.max_grad_norm) == (ulpt.OptimizerKind.ADAMW, 0.05, 0.8, 1e-6,
                                 ulpt.Schedule.COSINE, 2, 20, 0.5)
    assert o.weight_decay == pytest.approx(0.01)        # AdamW's default, resolved
    opt.save_checkpoint(tmp_path / "c.ulpt")
    assert ulpt.Optimizer.load_checkpoint(tmp_path / "c.ulpt").options == o
    assert ulpt.Optimizer.from_bytes(opt.to_bytes()).options == o
    again = ulpt.Optimizer(ulpt.Prompt(n_tokens=3, dim=8), **dataclasses.asdict(o))
    assert again.options == o
    sgd = ulpt.Optimizer(p, kind="sgd", momentum=0.9).options
    assert sgd.kind == ulpt.OptimizerKind.SGD and sgd.momentum == 0.9


def test_checkpoint_bytes_are_the_files_bytes_and_resume_bit_identically(tmp_path):
    p, opt = trained()
    data = opt.to_bytes()
    opt.save_checkpoint(tmp_path / "c.ulpt")
    assert data == (tmp_path / "c.ulpt").read_bytes()
    o2 = ulpt.Optimizer.from_bytes(bytearray(data))
    for o in (opt, o2):
        o.train_step(lambda E: (float((E * E).sum()), 2 * E))
    np.testing.assert_array_equal(o2.prompt.params, p.params)
    with pytest.raises(ulpt.CorruptError):
        ulpt.Optimizer.from_bytes(data[:-3])
    with pytest.raises(ulpt.FormatError):
        ulpt.Optimizer.from_bytes(p.to_bytes())          # a prompt, not a checkpoint
    with pytest.raises(TypeError):
        ulpt.Optimizer.from_bytes("text")


def test_forward_only_checkpoints_in_memory(tmp_path):
    p = ulpt.Prompt(n_tokens=2, dim=8, init_seed=4)
    zo = ulpt.ZOTrainer(ulpt.Optimizer(p, lr=0.01), directions=2, seed=9)

    def losses(E):
        return [float((e * e).sum()) for e in E]

    zo.step(losses)
    data = zo.to_bytes()
    zo.save_checkpoint(tmp_path / "z.ulpt")
    assert data == (tmp_path / "z.ulpt").read_bytes()
    z2 = ulpt.ZOTrainer.from_bytes(data)
    assert z2.options == zo.options and z2.position == zo.position
    zo.step(losses), z2.step(losses)
    np.testing.assert_array_equal(z2.prompt.params, p.params)
    with pytest.raises(ulpt.FormatError):
        ulpt.ZOTrainer.from_bytes(ulpt.Optimizer(p).to_bytes())


def test_ULPT_ERR_BUSY_is_BusyError():
    assert ulpt.ERR_BUSY == -11 and ulpt.strerror(ulpt.ERR_BUSY) != "unknown error"
    err = ulpt.errors.error(ulpt.ERR_BUSY, "ulpt_prompt_backward: in use")
    assert type(err) is ulpt.BusyError and isinstance(err, RuntimeError)


def package_imports():
    """module -> the package modules it imports (at any depth of its code)."""
    root = Path(ulpt.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        name = path.stem
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ulpt."):
                deps.add(node.module.split(".")[1])
        graph[name] = deps - {name}
    return graph


def test_the_package_has_no_import_cycle_and_every_module_imports():
    graph = package_imports()
    assert {"_handle", "prompt", "optimizer", "_serving", "files"} <= set(graph)
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import cycle: %s" % " -> ".join(path + [m])
        state[m] = "open"
        for d in graph.get(m, ()):
            if d in graph:
                visit(d, path + [m])
        state[m] = "done"

    for m in graph:
        visit(m, [])
    for m in graph:
        if m != "__init__":
            importlib.import_module("ulpt." + m)
    assert "errors" not in graph or not graph["errors"]            # the bottom layer
    assert "prompt" not in graph["optimizer"] or "optimizer" not in graph["prompt"]
