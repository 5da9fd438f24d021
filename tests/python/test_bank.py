"""ulpt.Bank (ulpt_bank_*): prompts served by id, materialised exactly as Prompt.forward
in f32 and rounded to nearest even in f16 and bf16 (checked against NumPy and a bit-level
reference), errors as exceptions, threads serving while others add and remove."""
import copy
import pickle
import threading

import numpy as np
import pytest

import ulpt

DIM = 16


def prompt(seed, n=4, model="m", **kw):
    p = ulpt.Prompt(n_tokens=n, dim=DIM, projection_seed=7, init_seed=seed, meta={"model": model},
                    **kw)
    p.params[:] = np.random.default_rng(seed).standard_normal(p.num_params).astype(np.float32)
    return p


def bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (x finite)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_add_find_remove_and_describe():
    bank = ulpt.Bank(model="m", dim=DIM)
    assert (bank.model, bank.dim, len(bank)) == ("m", DIM, 0)
    a, b = bank.add(prompt(1), "sst2"), bank.add(prompt(2, n=6))
    assert a != b and a > 0 and len(bank) == 2
    assert bank.find("sst2") == a and "sst2" in bank and "other" not in bank
    assert (bank.n_tokens(a), bank.n_tokens(b)) == (4, 6)
    bank.remove(a)
    with pytest.raises(KeyError) as err:
        bank.find("sst2")
    assert type(err.value) is ulpt.NotFoundError and err.value.code == ulpt.ERR_NOT_FOUND
    with pytest.raises(ulpt.NotFoundError):
        bank.n_tokens(a)                      # a removed id stays stale
    assert bank.add(prompt(1), "sst2") not in (a, b)
    assert repr(bank) == "<ulpt.Bank model='m' dim=16: 2 prompts>"


def test_materialise_is_forward_in_f32_and_rounds_to_nearest_even_in_f16_and_bf16():
    bank = ulpt.Bank(model="m", dim=DIM)
    ps = [prompt(s, n=3 + s) for s in range(3)]
    ids = [bank.add(p) for p in ps]
    order = [ids[2], ids[0], ids[2]]
    f32 = bank.materialise(order)
    for E, k in zip(f32, (2, 0, 2)):
        assert E.dtype == np.float32 and E.tobytes() == ps[k].forward().tobytes()
    f16 = bank.materialise(order, dtype="f16")
    bf16 = bank.materialise(order, dtype=ulpt.DType.BF16)
    for E, H, B in zip(f32, f16, bf16):
        assert H.dtype == np.float16 and B.dtype == np.uint16
        np.testing.assert_array_equal(H, E.astype(np.float16))
        np.testing.assert_array_equal(B, bf16_bits(E))


def test_materialise_into_writes_rows_of_a_larger_buffer_and_nothing_else():
    bank = ulpt.Bank(model="m", dim=DIM)
    p = prompt(3)
    i = bank.add(p)
    buf = np.full((4, DIM + 5), -7.0, np.float32)
    bank.materialise_into([(i, buf[:, :DIM])])
    np.testing.assert_array_equal(buf[:, :DIM], p.forward())
    assert (buf[:, DIM:] == -7).all()
    good = np.zeros((4, DIM), np.float32)
    for bad, exc in (([(i, np.zeros((4, DIM)))], ulpt.InvalidArgumentError),          # float64
                     ([(i, np.zeros((3, DIM), np.float32))], ulpt.InvalidArgumentError),
                     ([(i, good), (i + 999, good)], ulpt.NotFoundError),
                     ([(i, "array")], ulpt.ArgumentTypeError), ([i], ulpt.ArgumentTypeError)):
        with pytest.raises(exc):
            bank.materialise_into(bad)
        assert not good.any()                 # every request is checked before writing
    with pytest.raises(ulpt.InvalidArgumentError):
        bank.materialise([i], dtype="f8")


def test_prompts_of_another_model_or_width_and_bad_names_are_refused():
    bank = ulpt.Bank(model="m", dim=DIM)
    with pytest.raises(ulpt.MismatchError) as err:
        bank.add(prompt(1, model="other"))
    assert "other" in str(err.value)
    with pytest.raises(ulpt.MismatchError):
        bank.add(ulpt.Prompt(n_tokens=2, dim=DIM + 1, meta={"model": "m"}))
    bank.add(prompt(1), "x")
    with pytest.raises(ulpt.InvalidArgumentError):
        bank.add(prompt(2), "x")
    with pytest.raises(ulpt.InvalidArgumentError):
        bank.add(prompt(2), "a\0b")
    with pytest.raises(ulpt.ArgumentTypeError):
        bank.add("prompt")
    bad = prompt(4)
    bad.params[0] = np.nan
    with pytest.raises(ulpt.NonFiniteError):
        bank.add(bad)
    assert len(bank) == 1
    with pytest.raises(ulpt.InvalidArgumentError):
        ulpt.Bank(model="", dim=DIM)
    with pytest.raises(ulpt.InvalidArgumentError):
        ulpt.Bank(model="m", dim=0)


def test_load_dir_adds_every_prompt_file_all_or_nothing(tmp_path):
    for name, seed in (("b", 1), ("a", 2)):
        prompt(seed).save(tmp_path / ("%s.ulpt" % name))
    (tmp_path / "notes.txt").write_text("ignored")
    bank = ulpt.Bank(model="m", dim=DIM)
    assert bank.load_dir(tmp_path) == 2
    np.testing.assert_array_equal(bank.materialise([bank.find("a")])[0], prompt(2).forward())
    prompt(3, model="other").save(tmp_path / "c.ulpt")
    fresh = ulpt.Bank(model="m", dim=DIM)
    with pytest.raises(ulpt.MismatchError) as err:
        fresh.load_dir(tmp_path)
    assert "c.ulpt" in str(err.value) and len(fresh) == 0
    with pytest.raises(FileNotFoundError):
        fresh.load_dir(tmp_path / "none")


def test_threads_serve_while_another_adds_and_removes():
    bank = ulpt.Bank(model="m", dim=DIM)
    stable = bank.add(prompt(5))
    want = prompt(5).forward()
    stop = threading.Event()
    errors = []

    def serve():
        out = np.empty((4, DIM), np.float32)
        while not stop.is_set():
            bank.materialise_into([(stable, out)])
            if not np.array_equal(out, want):
                errors.append("wrong E")

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for t in threads:
        t.start()
    for k in range(100):
        i = bank.add(prompt(10 + k % 5))
        bank.remove(i)
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and len(bank) == 1


def test_banks_are_not_copied_but_handles_and_projections_behave():
    bank = ulpt.Bank(model="m", dim=DIM)
    for copier in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="cannot be pickled or copied"):
            copier(bank)
    proj = ulpt.Projection(seed=3, rank=2, dim=DIM, kind="gaussian")
    again = pickle.loads(pickle.dumps(proj))
    assert again.handle != proj.handle
    np.testing.assert_array_equal(again.matrix, proj.matrix)
    np.testing.assert_array_equal(copy.deepcopy(prompt(1).projection()).matrix,
                                  ulpt.Projection(seed=7, rank=2, dim=DIM).matrix)
    bank.close()
    with pytest.raises(ulpt.ClosedError):
        len(bank)
