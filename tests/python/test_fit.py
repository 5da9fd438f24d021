"""Prompt.init_from_embeddings (ulpt_prompt_init_from_embeddings): the least-squares fit
of E to a target, checked against NumPy's least squares where the fit is linear, and
its options and errors."""
import inspect

import numpy as np
import pytest

import ulpt


def test_without_scale_and_shift_the_fit_is_numpys_least_squares():
    p = ulpt.Prompt(n_tokens=5, dim=12, rank=3, projection_seed=2, flags=3)
    T = np.random.default_rng(0).standard_normal(p.shape)
    residual = p.init_from_embeddings(T)
    P = p.projection().matrix.astype(np.float64)
    Z = np.linalg.lstsq(P.T, T.T, rcond=None)[0].T          # min ||Z P - T||
    np.testing.assert_allclose(p.Z, Z, rtol=1e-5, atol=1e-6)
    E = Z @ P
    assert residual == pytest.approx(np.linalg.norm(E - T) / np.linalg.norm(T), rel=1e-5)
    np.testing.assert_allclose(p.forward(), E, rtol=1e-5, atol=1e-5)


def test_a_target_the_prompt_can_express_is_fitted_exactly():
    source = ulpt.Prompt(n_tokens=4, dim=16, projection_seed=9, init_seed=3)
    source.s[:] = np.linspace(0.5, 1.5, 16)
    source.b[:] = np.linspace(-1, 1, 16)
    T = source.forward()
    p = ulpt.Prompt(n_tokens=4, dim=16, projection_seed=9, init_seed=4)
    grads = p.grads.copy()
    residual = p.init_from_embeddings(T.astype(np.float64), max_iters=500, tol=0)
    assert residual < 1e-4
    np.testing.assert_allclose(p.forward(), T, atol=1e-4 * np.abs(T).max())
    np.testing.assert_array_equal(p.grads, grads)             # gradients left alone
    # more rounds never fit worse, and the result depends on T alone
    q = ulpt.Prompt(n_tokens=4, dim=16, projection_seed=9, init_seed=5)
    assert q.init_from_embeddings(T, max_iters=1) >= residual
    r = ulpt.Prompt(n_tokens=4, dim=16, projection_seed=9, init_seed=6)
    r.init_from_embeddings(T, max_iters=500, tol=0)
    assert r.params.tobytes() == p.params.tobytes()


def test_defaults_come_from_the_library_and_bad_input_is_refused():
    d = ulpt.fit_defaults()
    sig = inspect.signature(ulpt.Prompt.init_from_embeddings)
    assert (sig.parameters["max_iters"].default, sig.parameters["tol"].default) == \
        (d.max_iters, d.tol) == (100, 1e-10)
    p = ulpt.Prompt(n_tokens=2, dim=4)
    before = p.params.copy()
    with pytest.raises(ulpt.InvalidArgumentError):
        p.init_from_embeddings(np.zeros((4, 2)))
    with pytest.raises(ulpt.InvalidArgumentError) as err:
        p.init_from_embeddings(np.ones((2, 4)), max_iters=0)
    assert "max_iters" in str(err.value)
    with pytest.raises(ulpt.InvalidArgumentError):
        p.init_from_embeddings(np.ones((2, 4)), tol=-1.0)
    T = np.ones((2, 4))
    T[1, 2] = np.nan
    with pytest.raises(ulpt.NonFiniteError):
        p.init_from_embeddings(T)
    np.testing.assert_array_equal(p.params, before)
    opt = ulpt.Optimizer(p)

    def host(E, G):
        with pytest.raises(ulpt.BusyError):
            p.init_from_embeddings(np.ones((2, 4)))
        return 0.0

    opt.train_step(host)
