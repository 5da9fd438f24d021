"""The Pythonic surface: enums, keyword options whose visible defaults are the library's,
reprs, the write-through metadata mapping, lr in double precision, the zero-copy
callback path, shared projections, files and checkpoints."""
import inspect
import pydoc

import numpy as np
import pytest

import ulpt
from ulpt._native import lib


def test_enums_are_IntEnums_with_the_headers_values_and_accept_names():
    assert ulpt.ProjectionKind.GAUSSIAN == 2 and ulpt.PROJ_IDENTITY is ulpt.ProjectionKind.IDENTITY
    assert (ulpt.OptimizerKind.SGD, ulpt.OptimizerKind.ADAM, ulpt.OptimizerKind.ADAMW) == (0, 1, 2)
    assert (ulpt.Schedule.CONSTANT, ulpt.Schedule.LINEAR, ulpt.Schedule.COSINE) == (0, 1, 2)
    assert (ulpt.DType.F32, ulpt.DType.F16, ulpt.DType.BF16) == (0, 1, 2)
    assert (ulpt.Flags.NO_SCALE | ulpt.Flags.NO_SHIFT) == 3
    assert (ulpt.FileKind.PROMPT, ulpt.FileKind.CHECKPOINT) == (1, 2)
    p = ulpt.Prompt(n_tokens=2, dim=8, projection_kind="rademacher", flags="no_shift")
    assert p.projection().kind is ulpt.ProjectionKind.RADEMACHER
    assert p.flags is ulpt.Flags.NO_SHIFT and p.b is None and p.s is not None
    opt = ulpt.Optimizer(p, kind="sgd", schedule="cosine", warmup_steps=1, total_steps=9)
    assert opt.step_count == 0


def test_signatures_show_keyword_only_options_with_the_librarys_defaults():
    sig = inspect.signature(ulpt.Prompt)
    assert all(p.kind is p.KEYWORD_ONLY for p in sig.parameters.values())
    d = ulpt.prompt_defaults()   # ulpt_prompt_options_init
    assert sig.parameters["n_tokens"].default is inspect.Parameter.empty
    assert sig.parameters["dim"].default is inspect.Parameter.empty
    assert sig.parameters["rank"].default == d.rank == 2
    assert sig.parameters["n_groups"].default == d.n_groups == 1
    assert sig.parameters["init_std"].default == d.init_std == 1.0
    assert sig.parameters["projection_kind"].default is ulpt.ProjectionKind.XAVIER_UNIFORM
    osig = inspect.signature(ulpt.Optimizer)
    o = ulpt.optimizer_defaults()  # ulpt_optimizer_options_init
    assert osig.parameters["lr"].default == o.lr == 1e-3
    assert osig.parameters["kind"].default is ulpt.OptimizerKind.ADAMW
    assert osig.parameters["weight_decay"].default is None and o.weight_decay == -1.0
    assert (osig.parameters["beta1"].default, osig.parameters["beta2"].default,
            osig.parameters["eps"].default) == (o.beta1, o.beta2, o.eps)
    s = ulpt.save_defaults()     # ulpt_save_options_init
    ssig = inspect.signature(ulpt.Prompt.save)
    assert ssig.parameters["dtype"].default is ulpt.DType.F32 and ssig.parameters["level"].default == s.level == 6
    text = pydoc.render_doc(ulpt.Prompt, renderer=pydoc.plaintext)
    assert "rank: 'int' = 2" in text and "init_std: 'float' = 1.0" in text
    assert "InvalidArgumentError" in text and "(n_tokens, dim)" in text


def test_reprs_describe_the_objects():
    p = ulpt.Prompt(n_tokens=10, dim=64, projection_seed=7, flags=ulpt.NO_SCALE)
    assert repr(p) == ("ulpt.Prompt(n_tokens=10, dim=64, rank=2, n_groups=1, projection_seed=7, "
                       "projection_kind='xavier_uniform', flags=1)  # 84 trainable parameters")
    opt = ulpt.Optimizer(p, lr=0.25)
    assert repr(opt) == "<ulpt.Optimizer for a (10, 64) prompt: step 0, next lr 0.25>"
    assert repr(p.projection()) == "<ulpt.Projection seed=7 rank=2 dim=64 kind=XAVIER_UNIFORM>"
    p.meta["task"] = "sst2"
    assert repr(p.meta) == "ulpt.Metadata({'task': 'sst2'})"
    p.close()
    assert repr(p) == "<ulpt.Prompt closed>"


def test_meta_is_a_mapping_that_writes_through_in_insertion_order():
    p = ulpt.Prompt(n_tokens=2, dim=8, meta={"model": "m", "task": "t"})
    m = p.meta
    m["created"] = "2026-01-01"
    m["task"] = "t2"                    # replacing keeps the position
    assert list(p.meta) == ["model", "task", "created"] and len(m) == 3
    assert p.get_meta("task") == "t2" and lib.ulpt_prompt_get_meta(p.handle, b"task") == b"t2"
    del p.meta["model"]
    assert "model" not in p.meta and p.get_meta("model", "none") == "none"
    with pytest.raises(KeyError):
        del p.meta["model"]
    with pytest.raises(KeyError):
        p.meta["absent"]
    p.meta.update({"a": "1"})
    p.set_meta("a", None)
    assert dict(p.meta) == {"task": "t2", "created": "2026-01-01"}
    p.meta = {"only": "this"}
    assert dict(p.meta) == {"only": "this"}
    with pytest.raises(ulpt.InvalidArgumentError):
        p.meta = {"a": "1", "": "empty key"}        # refused by the library mid-way
    assert dict(p.meta) == {"only": "this"}         # and nothing changed
    assert p.meta == {"only": "this"} and dict(p.meta_bytes) == {b"only": b"this"}


def test_lr_is_the_double_the_library_uses():
    p = ulpt.Prompt(n_tokens=2, dim=8)
    opt = ulpt.Optimizer(p, lr=0.1, schedule="linear", warmup_steps=3, total_steps=10)
    seen = []
    for t in range(6):
        seen.append(opt.lr)
        p.grads[:] = 0.5
        opt.step()
    want = [0.1 * t / 3 for t in range(3)] + [0.1 * (10 - t) / 7 for t in range(3, 6)]
    assert seen == pytest.approx(want, rel=1e-15, abs=0)
    assert seen[1] == 0.1 / 3 and seen[1] != float(np.float32(0.1 / 3))
    assert opt.lr_float32 == float(np.float32(opt.lr))


def test_the_callback_gets_the_librarys_buffers_without_copies():
    p = ulpt.Prompt(n_tokens=4, dim=16, init_seed=1)
    opt = ulpt.Optimizer(p, lr=0.01)
    seen = []

    def host(E, G):
        assert not E.flags.writeable and G.flags.writeable
        assert E.dtype == G.dtype == np.float32 and E.shape == G.shape == (4, 16)
        assert not G.any()                         # arrives zeroed
        with pytest.raises(ValueError):
            E[0, 0] = 1
        seen.append((E.ctypes.data, G.ctypes.data, id(E), id(G), E.copy()))
        G[:] = E
        return 0.5 * float((E * E).sum())

    for _ in range(3):
        before = p.forward()
        loss = opt.train_step(host)
        np.testing.assert_array_equal(seen[-1][4], before)
        assert loss == pytest.approx(0.5 * float((before.astype(np.float64) ** 2).sum()), rel=1e-6)
    # the same library buffers and the same view objects every step
    assert len({s[:4] for s in seen}) == 1


def test_a_callback_may_return_an_array_of_any_real_dtype_and_take_E_alone():
    p = ulpt.Prompt(n_tokens=3, dim=5, init_seed=2)
    q = ulpt.Prompt.from_bytes(p.to_bytes())
    a, b = ulpt.Optimizer(p, lr=0.1), ulpt.Optimizer(q, lr=0.1)
    T = np.ones((3, 5))
    for _ in range(3):
        la = a.train_step(lambda E: (((E - T) ** 2).sum(), 2 * (E - T)))    # float64 grad

        def in_place(E, G):
            np.subtract(E, T, out=G, casting="unsafe")
            loss = float((G.astype(np.float64) ** 2).sum())
            G *= 2
            return loss

        lb = b.train_step(in_place)
        assert la == pytest.approx(lb, rel=1e-6)
        np.testing.assert_allclose(p.params, q.params, rtol=1e-6, atol=1e-7)


def test_views_split_the_parameters_as_the_header_lays_them_out():
    p = ulpt.Prompt(n_tokens=3, dim=4, rank=2)
    p.params[:] = np.arange(p.num_params)
    np.testing.assert_array_equal(p.Z, np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(p.s, np.arange(6, 10))
    np.testing.assert_array_equal(p.b, np.arange(10, 14))
    p.Z[1, 1] = -1
    assert p.params[3] == -1
    z, s, b = p.split(p.grads)
    assert z.shape == (3, 2) and s.shape == b.shape == (4,)
    assert ulpt.Prompt(n_tokens=1, dim=4, flags=3).split(np.zeros(2))[1:] == (None, None)


def test_projections_can_be_shared_between_prompts():
    g = 2
    projs = [ulpt.Projection(seed=(5 + i * 0x9E3779B97F4A7C15) % 2**64, rank=2, dim=16)
             for i in range(g)]
    a = ulpt.Prompt(n_tokens=4, dim=16, n_groups=g, projection_seed=5, projections=projs)
    b = ulpt.Prompt(n_tokens=4, dim=16, n_groups=g, projection_seed=5)
    # the prompt holds the same projection (a reference), not a copy
    assert a.projection(1).matrix.ctypes.data == projs[1].matrix.ctypes.data
    assert b.projection(1).matrix.ctypes.data != projs[1].matrix.ctypes.data
    for proj in projs:
        proj.close()
    del projs
    np.testing.assert_array_equal(a.forward(), b.forward())
    wrong = [ulpt.Projection(seed=6, rank=2, dim=16)]
    with pytest.raises(ulpt.MismatchError):
        ulpt.Prompt(n_tokens=4, dim=16, projection_seed=5, projections=wrong)
    with pytest.raises(ulpt.InvalidArgumentError):
        ulpt.Prompt(n_tokens=4, dim=16, n_groups=2, projections=wrong)
    with pytest.raises(ulpt.ArgumentTypeError):
        ulpt.Prompt(n_tokens=4, dim=16, projections=["P"])


def test_identity_projection_has_no_matrix():
    p = ulpt.Prompt(n_tokens=2, dim=4, rank=4, projection_kind="identity")
    assert p.projection().matrix is None
    np.testing.assert_allclose(p.forward(), p.Z, rtol=0)


def test_set_num_threads_checks_its_argument():
    ulpt.set_num_threads(1)
    with pytest.raises(ulpt.InvalidArgumentError):
        ulpt.set_num_threads(0)


def test_files_inspect_and_checkpoints(tmp_path):
    p = ulpt.Prompt(n_tokens=4, dim=8, init_seed=3, meta={"model": "m"})
    p.save(tmp_path / "h.ulpt", dtype="f16", level=9)
    info = ulpt.inspect(tmp_path / "h.ulpt")
    assert info.kind is ulpt.FileKind.PROMPT and info.dtype is ulpt.DType.F16
    assert info.file_bytes == (tmp_path / "h.ulpt").stat().st_size
    assert ulpt.Prompt.load(tmp_path / "h.ulpt").to_bytes(dtype="f16", level=9) == \
        (tmp_path / "h.ulpt").read_bytes()
    opt = ulpt.Optimizer(p, lr=0.1)
    T = np.ones(p.shape, np.float32)
    host = lambda E: (float(((E - T) ** 2).sum()), 2 * (E - T))  # noqa: E731
    for _ in range(2):
        opt.train_step(host)
    opt.save_checkpoint(tmp_path / "c.ulpt")
    assert ulpt.inspect(tmp_path / "c.ulpt").kind is ulpt.FileKind.CHECKPOINT
    resumed = ulpt.Optimizer.load_checkpoint(tmp_path / "c.ulpt")
    assert resumed.step_count == 2 and resumed.prompt.meta["model"] == "m"
    for _ in range(3):
        opt.train_step(host)
        resumed.train_step(host)
    np.testing.assert_array_equal(resumed.prompt.params, p.params)
    safetensors = tmp_path / "E.safetensors"
    p.export_safetensors(safetensors)
    assert safetensors.stat().st_size > 4 * 8 * 4
    with pytest.raises(ulpt.MissingFileError) as err:
        ulpt.inspect(tmp_path / "none.ulpt")
    assert ulpt.last_error() == err.value.message
