"""ulpt.ZOTrainer (ulpt_zo_*): the step is the two-point estimate built from the losses
the host returned and the stream's directions, training falls from losses alone, and
the trainer follows the package's lifetime and exception rules."""
import copy
import inspect
import pickle

import numpy as np
import pytest

import ulpt


def setup(**zo_options):
    p = ulpt.Prompt(n_tokens=3, dim=8, projection_seed=1, init_seed=2)
    opt = ulpt.Optimizer(p, kind="sgd", lr=0.01)
    return p, opt, ulpt.ZOTrainer(opt, **zo_options)


TARGET = np.linspace(-1, 1, 24).reshape(3, 8)


def losses_of(E):
    """Quadratic loss of each of the `count` prompts in E (count, n, d)."""
    return ((E.astype(np.float64) - TARGET) ** 2).sum(axis=(1, 2))


def test_defaults_come_from_the_library_and_options_read_back():
    d = ulpt.zo_defaults()
    sig = inspect.signature(ulpt.ZOTrainer)
    assert sig.parameters["epsilon"].default == d.epsilon == 1e-3
    assert sig.parameters["directions"].default == d.directions == 1
    assert sig.parameters["distribution"].default is ulpt.ZODistribution.RADEMACHER
    _, _, zo = setup(epsilon=0.01, directions=3, batch=4, distribution="gaussian",
                     perturb="z", seed=2**64 - 1)
    assert zo.options == ulpt.ZOOptions(0.01, 3, 4, ulpt.ZODistribution.GAUSSIAN,
                                        ulpt.ZOPerturb.Z, 2**64 - 1)
    assert setup(directions=2)[2].options.batch == 4          # 0 resolves to 2q
    assert "directions=3" in repr(zo)


def test_a_step_is_the_two_point_estimate_of_the_hosts_losses():
    p, opt, zo = setup(epsilon=0.01, directions=3, batch=2)
    theta = p.params.astype(np.float64)
    moved = ulpt.Prompt.from_bytes(p.to_bytes())
    seen = []

    def host(E, losses):                   # two prompts a call: 3 calls a step
        assert E.shape == (2, 3, 8) and not E.flags.writeable
        seen.append(E.copy())
        losses[:] = losses_of(E)

    loss = zo.step(host)
    assert len(seen) == 3 and zo.position == 3
    got = np.concatenate([losses_of(E) for E in seen])
    assert loss == pytest.approx(got.mean(), rel=1e-12)
    eps = float(np.float32(0.01))
    want = np.zeros_like(theta)
    for j in range(3):
        u = zo.direction(j).astype(np.float64)
        assert set(np.unique(u)) <= {-1.0, 1.0}
        want += (got[2 * j] - got[2 * j + 1]) / (2 * eps) * u / 3
        # the host saw theta + eps u_j and theta - eps u_j, in this order
        for sign, E in ((1, seen[j][0]), (-1, seen[j][1])):
            moved.params[:] = (theta + sign * eps * u).astype(np.float32)
            np.testing.assert_allclose(E, moved.forward(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p.grads, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p.params, theta - 0.01 * want, rtol=1e-5, atol=1e-6)
    assert opt.step_count == 1


def test_forward_only_training_lowers_the_loss():
    p, opt, zo = setup(epsilon=1e-3, directions=4)
    first = zo.step(lambda E: losses_of(E))
    for _ in range(150):
        last = zo.step(lambda E: losses_of(E))
    assert last < 0.5 * first


def test_position_and_directions():
    _, _, zo = setup(seed=9)
    u5 = zo.direction(5)
    zo.position = 5
    assert zo.position == 5
    np.testing.assert_array_equal(zo.direction(5), u5)
    with pytest.raises(ulpt.InvalidArgumentError):
        zo.position = -1
    _, _, z_only = setup(perturb="z")
    u = z_only.direction(0)
    assert u[:6].any() and not u[6:].any()            # s and b are not perturbed


def test_failures_change_nothing_and_interrupts_propagate():
    p, opt, zo = setup()
    zo.step(losses_of)
    before = (opt.to_bytes(), zo.position)
    for host, exc in ((lambda E: [float("nan")] * len(E), ulpt.NonFiniteError),
                      (lambda E: np.zeros(len(E) + 1), ulpt.CallbackError),
                      (lambda E: 1 / 0, ulpt.CallbackError)):
        with pytest.raises(exc):
            zo.step(host)
        assert (opt.to_bytes(), zo.position) == before

    def interrupted(E):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        zo.step(interrupted)
    assert (opt.to_bytes(), zo.position) == before
    with pytest.raises(ulpt.ArgumentTypeError):
        ulpt.ZOTrainer(p)
    with pytest.raises(ulpt.InvalidArgumentError) as err:
        ulpt.ZOTrainer(opt, epsilon=0.0)
    assert "epsilon" in str(err.value)


def test_in_use_and_lifetimes():
    p, opt, zo = setup()
    caught = []

    def host(E):
        for call in (zo.close, opt.close, p.close, opt.step, lambda: zo.step(losses_of)):
            try:
                call()
            except ulpt.BusyError as exc:
                caught.append(exc)
        assert np.isfinite(p.forward()).all()          # reading is fine
        return losses_of(E)

    zo.step(host)
    assert len(caught) == 5
    kept = []
    zo.step(lambda E: kept.append(E) or losses_of(E))
    del p, opt
    p2 = zo.prompt
    zo2 = copy.deepcopy(zo)
    zo3 = pickle.loads(pickle.dumps(zo))
    for z in (zo2, zo3):
        assert z.position == zo.position and z.options == zo.options
        np.testing.assert_array_equal(z.prompt.params, p2.params)
        z.step(losses_of)
    zo.step(losses_of)
    np.testing.assert_array_equal(zo2.prompt.params, zo.prompt.params)
    zo.close()
    with pytest.raises(ulpt.ClosedError):
        zo.step(losses_of)
    del zo
    assert kept[0].shape == (2, 3, 8) and np.isfinite(kept[0]).all()   # still readable


def test_forward_only_checkpoint_resumes_bit_identically(tmp_path):
    opts = dict(directions=2, batch=3, epsilon=1e-2, seed=99, distribution="gaussian")
    _, _, a = setup(**opts)
    for _ in range(12):
        a.step(losses_of)
    _, _, b = setup(**opts)
    for _ in range(6):
        b.step(losses_of)
    path = tmp_path / "zo.ulpt"
    b.save_checkpoint(path)
    c = ulpt.ZOTrainer.load_checkpoint(path)
    assert c.position == 12 and c.options == b.options
    assert c.optimizer.step_count == 6 and c.prompt is c.optimizer.prompt
    for _ in range(6):
        c.step(losses_of)
    assert c.position == a.position
    assert np.array_equal(c.prompt.params.view(np.uint32), a.prompt.params.view(np.uint32))
    assert ulpt.inspect(path).format_minor == 1
    # an ordinary checkpoint too; an ordinary one holds no forward-only state
    opt = ulpt.Optimizer.load_checkpoint(path)
    assert opt.step_count == 6
    opt.save_checkpoint(tmp_path / "plain.ulpt")
    with pytest.raises(ulpt.FormatError, match="without forward-only state"):
        ulpt.ZOTrainer.load_checkpoint(tmp_path / "plain.ulpt")
